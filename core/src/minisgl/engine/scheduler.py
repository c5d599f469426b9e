"""The scheduling brain: continuous batching over the paged KV pool with a prefix cache.

`schedule` reserves every decode's next slot (decode.py: evicting, then retracting when
the pool is short), picks what runs (admission.py: decodes, prefill chunks, admissions,
warm work last) and assembles one ForwardBatch of them (step_builder.py) with each sampled
row's sampling values (sampling_rows.py) and grammar mask (grammar_masks.py). `process`
appends the sampled tokens, finishes what is done (finished requests insert their KV into
the prefix cache and give back the rest: kv.py) and says what each request got.

Overlap scheduling (runners with `supports_overlap`): step N+1 is built and launched
before step N's tokens are read back; its decode rows read step N's tokens on the device.
Requests that step N finishes (a stop token) ran one wasted row in N+1, which `process`
discards. A request that step N certainly finishes (max_new_tokens, the context) is not
scheduled again.

A step may sample several rows of one request (consecutive rows of `sampled`): `process`
appends them in order and stops at the first that ends the request; `KVManager.truncate`
takes a request's KV back to a length. Speculative decoding builds on both.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import torch

from ..cache.base import PrefixCache
from ..cache.tiers import FLUSH_TIERS, KVTiers, cache_stats
from .admission import Admission
from .batch import ForwardResult, ModelRunner
from .decode import DecodeManager
from .grammar_masks import GrammarMasks
from .kv import KVManager
from .messages import EngineOutput
from .queue_policy import QueuePolicy
from .request import Req
from .sampling_rows import SamplingRows
from .speculative import Proposer, Speculation
from .speculative import metrics as speculation_metrics
from .step_builder import ScheduledBatch, build_step

log = logging.getLogger("minisgl.engine")

ACCELERATOR_PREFILL_CHUNK = 8192  # the original mini-sglang's --max-prefill-length
# A CPU runs a 0.6B model's prefill at roughly 0.6 ms a token on two cores, so a chunk of
# 8192 stalls the decodes batched with it for about 5 s; 512 keeps such a step near 0.3 s,
# under a second for models a few times larger, and CPU matmuls are already at full speed
# at a few hundred rows, so long prompts take hardly longer to prefill.
CPU_PREFILL_CHUNK = 512


def prefill_chunk(max_prefill_length: int | None, device: str | torch.device) -> int:
    """Tokens of prefill one step may carry: --max-prefill-length when set, else the
    device's default."""
    if max_prefill_length is not None:
        return max_prefill_length
    return CPU_PREFILL_CHUNK if torch.device(device).type == "cpu" else ACCELERATOR_PREFILL_CHUNK


class Scheduler:
    def __init__(self, runner: ModelRunner, cache: PrefixCache, policy: QueuePolicy, *, page_size: int,
                 max_running_requests: int, max_prefill_length: int | None, max_context_len: int,
                 decode_log_stride: int = 0, proposer: Proposer | None = None, num_draft_tokens: int = 0,
                 tiers: KVTiers | None = None) -> None:
        self.device = torch.device(runner.device)
        self.max_context_len = max_context_len
        self.decode_log_stride = decode_log_stride
        self.waiting: dict[str, Req] = {}
        self.running: list[Req] = []
        self.counters: Counter[str] = Counter()
        self.steps = 0
        self.decode_steps = 0
        if max_prefill_length is None:
            max_prefill_length = prefill_chunk(None, self.device)
            log.info("prefill chunks of at most %d tokens (the default on %s; --max-prefill-length sets it)",
                     max_prefill_length, self.device.type)
        # the runner's own cap (backend-mlx's MLX_PREFILL_STEP_SIZE) splits prefills where it wants
        cap = runner.max_prefill_tokens
        if cap and cap < max_prefill_length:
            log.info("prefill chunks of at most %d tokens (the backend's limit; --max-prefill-length is %d)",
                     cap, max_prefill_length)
            max_prefill_length = cap
        self.max_prefill = max_prefill_length
        num_slots = runner.kv_capacity()
        self.tiers = tiers
        self.kv = KVManager(num_slots, page_size, cache, max_running_requests,
                            min(max_context_len, num_slots) + 1, self.device, self.counters, self.tiers)
        self.rows = SamplingRows(max_running_requests, self.device)
        on_host = runner.forward_on_host if runner.forward_on_host is not None else self.device.type == "cpu"
        self.masks = GrammarMasks(runner.vocab_size, self.device, on_host)
        self.speculation = (Speculation(proposer, num_draft_tokens, max_context_len, self.counters, self.masks)
                            if proposer is not None else None)
        self.decode = DecodeManager(self.kv, self.running, self.waiting, self.counters, max_context_len,
                                    self.speculation)
        self.admission = Admission(self.kv, self.decode, self.rows, policy, self.counters,
                                   max_running=max_running_requests, max_prefill=max_prefill_length)

    def add(self, req: Req) -> None:
        self.waiting[req.rid] = req

    def find(self, rid: str) -> Req | None:
        return self.waiting.get(rid) or next((r for r in self.running if r.rid == rid), None)

    def finish(self, req: Req, reason: str) -> None:
        req.finished_reason = reason
        if req.rid in self.waiting:
            del self.waiting[req.rid]
        elif req in self.running:
            self.kv.release(req, keep_in_cache=True)
            self.running.remove(req)
            if self.speculation is not None:
                self.speculation.release(req)

    def schedule(self, previous: ScheduledBatch | None = None) -> ScheduledBatch | None:
        """The next batch. `previous` is the launched, unprocessed step whose device-side
        tokens feed this one's decode rows (overlap scheduling); None when all is processed."""
        retracted = self.decode.reserve()
        items = self.admission.plan(retracted)
        self.kv.flush()
        if not items:
            return None

        def sampling(sampled: list[Req]):
            constrained = [(r, row) for row, r in enumerate(sampled) if r.grammar is not None]
            mask = self.masks.mask(constrained, len(sampled), previous) if constrained else None
            return self.rows.batch(sampled, mask)

        return build_step(items, previous, self.kv, sampling)

    def process(self, scheduled: ScheduledBatch, result: ForwardResult) -> list[EngineOutput]:
        """Append the sampled tokens, finish what is done, and say what each request got."""
        self.steps += 1
        if not scheduled.sampled and not scheduled.pooled:
            return []
        result = result.resolve()  # the only wait for the device
        outputs = self._pool(scheduled, result)
        if not scheduled.sampled:
            return outputs
        self.masks.wait_fed()
        tokens = result.next_tokens.tolist()
        logprobs = result.logprobs.tolist() if result.logprobs is not None else None
        top_ids = result.top_logprob_ids.tolist() if result.top_logprob_ids is not None else None
        top_vals = result.top_logprob_values.tolist() if result.top_logprob_values is not None else None
        # tokens the mask worker has not fed to their matchers (without overlap: all of them)
        self.masks.feed([(req, int(tokens[i])) for i, req in enumerate(scheduled.sampled)
                         if req.grammar is not None and req.finished_reason is None
                         and req.grammar_fed <= req.num_output and not req.draft])
        for req, rows in _runs(scheduled.sampled):
            req.inflight -= len(rows)
            if req.finished_reason is not None:
                continue  # finished (stop token, abort) after this step was launched: wasted rows
            emitted = [int(tokens[i]) for i in rows]
            # a drafted request's matcher gets each token it emits, before the token is appended
            feed_each = req.grammar is not None and bool(req.draft)
            if req.draft and self.speculation is not None:  # keep the sampled drafts; forget the rest's K/V
                emitted = self.speculation.verify(req, emitted)
                self.kv.truncate(req, req.kv_len - (len(rows) - len(emitted)))
                req.draft = []
            out = EngineOutput(rid=req.rid, prompt_tokens=len(req.prompt_ids),
                               cached_tokens=max(req.prompt_cached_tokens, 0),
                               queue_time_s=req.queue_time_s if req.num_output == 0 else 0.0)
            want_logprobs = bool(req.params.logprobs or req.params.top_logprobs) and logprobs is not None
            for i, tok in zip(rows, emitted):
                if feed_each:
                    self.masks.feed([(req, tok)])
                reason = self._append(req, tok)
                out.new_token_ids.append(tok)
                if want_logprobs:
                    out.logprobs = [*(out.logprobs or []), logprobs[i]]
                    if req.params.top_logprobs and top_ids is not None and top_vals is not None:
                        k = req.params.top_logprobs
                        out.top_logprobs = [*(out.top_logprobs or []), list(zip(top_ids[i][:k], top_vals[i][:k]))]
                if reason is not None:
                    self.finish(req, reason)
                    out.finished, out.finish_reason = True, reason
                    break
            out.completion_tokens = req.num_output
            if not req.warm_only:
                outputs.append(out)
        if scheduled.batch.is_decode:
            self._log_decode(scheduled.batch.batch_size)
        if self.speculation is not None and scheduled.decode_only:
            self.speculation.observe(time.perf_counter() - scheduled.started, scheduled.drafted)
        return outputs

    def _pool(self, scheduled: ScheduledBatch, result: ForwardResult) -> list[EngineOutput]:
        """Add each pooling request's span to its sum; one whose prompt has run ends here with
        its embedding (the mean divides by the prompt's length)."""
        if not scheduled.pooled:
            return []
        assert result.pooled is not None, "the runner returned no pooled rows for the batch's pool_spans"
        rows = result.pooled.float().cpu()
        outputs = []
        for i, (req, first, last) in enumerate(scheduled.pooled):
            if req.finished_reason is not None:
                continue  # aborted after this step was launched
            req.pooled = rows[i].clone() if first else req.pooled + rows[i]
            if not last:
                continue
            vector = req.pooled / len(req.prompt_ids) if req.pooling == "mean" else req.pooled
            self.finish(req, "stop")
            outputs.append(EngineOutput(rid=req.rid, finished=True, finish_reason="stop", prompt_tokens=len(req.prompt_ids),
                                        queue_time_s=req.queue_time_s, embedding=vector.numpy().astype("<f4").tobytes()))
        return outputs

    def _append(self, req: Req, tok: int) -> str | None:
        """Add a sampled token; the finish reason it brings, if any."""
        req.all_ids.append(tok)
        req.num_output += 1
        self.counters["generation_tokens_total"] += 0 if req.warm_only else 1
        if req.grammar_error and tok not in req.stop_ids:
            log.warning("rid=%s: token %d outside its grammar (%s)", req.rid, tok, req.grammar_error)
        if tok in req.stop_ids and req.num_output >= req.params.min_new_tokens:
            return "stop"
        if req.grammar_done:
            return "stop"  # the grammar is complete: only EOS could follow
        if req.num_output >= req.max_new_tokens or len(req.all_ids) >= self.max_context_len:
            return "length"
        return None

    def _log_decode(self, batch_size: int) -> None:
        self.decode_steps += 1
        if self.decode_log_stride and self.decode_steps % self.decode_log_stride == 0:
            log.info("decode step %d: batch=%d running=%d waiting=%d kv used=%d/%d cached=%d",
                     self.decode_steps, batch_size, len(self.running), len(self.waiting),
                     self.kv.used_tokens(self.running), self.kv.pool.num_slots, self.kv.cache.total_tokens)

    def metrics(self) -> dict:
        c, pool = self.counters, self.kv.pool
        return {
            "num_running_reqs": len(self.running),
            "num_waiting_reqs": len(self.waiting),
            "kv_total_tokens": pool.num_slots,
            "kv_used_tokens": self.kv.used_tokens(self.running),
            "kv_cached_tokens": self.kv.cache.total_tokens,
            "kv_free_tokens": pool.free_pages * pool.page_size,
            **{name: c[name] for name in ("prompt_tokens_total", "generation_tokens_total", "cached_tokens_total",
                                          "cache_hits", "cache_misses", "retractions_total", "evicted_tokens_total")},
            "steps_total": self.steps,
            **speculation_metrics(self.counters),
            **(self.tiers.metrics() if self.tiers is not None else {}),
        }

    def flush_cache(self, tier: str | None = None) -> dict[str, int]:
        """Drop cached prefixes from one tier (`device`: the unlocked ones in the pool; `host`;
        `disk`: this model's files) or `all`; None drops device and host and keeps the disk
        tier, which is there to outlive this process and may be shared. What each dropped."""
        if tier is not None and tier not in FLUSH_TIERS:
            raise ValueError(f"flush_cache: tier must be one of {', '.join(FLUSH_TIERS)}, not {tier!r}")
        if tier in ("host", "disk") and (self.tiers is None or tier == "disk" and self.tiers.disk is None):
            raise ValueError(f"flush_cache: there is no {tier} tier (--enable-hierarchical-cache"
                             f"{' --hicache-storage-backend file' if tier == 'disk' else ''})")
        out: dict[str, int] = {}
        if tier in (None, "device", "all"):
            out["flushed_tokens"] = self.kv.flush_cache()
            log.info("prefix cache flushed: %d tokens freed", out["flushed_tokens"])
        if self.tiers is not None and tier in (None, "host", "all"):
            out["host_pages"] = self.tiers.flush()
            log.info("hierarchical cache: %d host pages dropped", out["host_pages"])
        if self.tiers is not None and self.tiers.disk is not None and tier in ("disk", "all"):
            out["disk_pages"] = self.tiers.flush_disk()
            log.info("hierarchical cache: %d disk page files removed", out["disk_pages"])
        return out

    def cache_stats(self) -> dict:
        return cache_stats(self.counters, self.kv.P, self.kv.cache.total_tokens, self.tiers)

    def check_invariants(self) -> None:
        self.kv.check(self.running, list(self.waiting.values()))
        draft_check = getattr(self.speculation.proposer, "check", None) if self.speculation else None
        if draft_check is not None:  # a proposer with a KV pool of its own
            draft_check()


def _runs(sampled: list[Req]) -> list[tuple[Req, list[int]]]:
    """The sampled rows grouped by request: a request's rows are consecutive."""
    runs: list[tuple[Req, list[int]]] = []
    for i, req in enumerate(sampled):
        if runs and runs[-1][0] is req:
            runs[-1][1].append(i)
        else:
            runs.append((req, [i]))
    return runs
