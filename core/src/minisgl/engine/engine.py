"""The in-process engine every frontend drives (`minisgl.LLM`, the server's engine process).

It resolves the model, picks the backend (backend_choice.py), builds the runner, the
prefix cache and the queue policy from the plugin registry, and runs one step at a time:
schedule -> run -> process. It deals only in token ids.

`add_request` and `abort_request` may be called from any thread at any moment: they land
in an inbox that the next `step()` drains. Everything else belongs to the thread that
calls `step()`.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from typing import Any

from ..cache.base import PrefixCache
from ..cache.tiers import build_tiers
from ..cpu_threads import EngineThreads
from ..frontend.errors import ErrorKind
from ..grammar import GrammarBackend, GrammarError, constraint_of
from ..models import ResolvedModel, resolve_model
from ..plugins import Registry, get_registry, load_selected
from ..sampling_params import SamplingParams
from ..settings import Settings
from .backend_choice import load_runner
from .batch import ModelRunner
from .grammar_queue import GrammarQueue
from .intake import request_fault
from .messages import EngineOutput, EngineRequest
from .queue_policy import QueuePolicy
from .request import Req
from .scheduler import ScheduledBatch, Scheduler
from .speculative import load_proposer
from .warming import PendingCall, WarmJobs

log = logging.getLogger("minisgl.engine")


class Engine:
    def __init__(self, settings: Settings, registry: Registry | None = None, *, runner: ModelRunner | None = None) -> None:
        self.settings = settings
        self.registry = registry or get_registry()
        self.model: ResolvedModel = resolve_model(settings.model_path, dummy_weight=settings.dummy_weight)
        # before the target's runner: a draft model's weights and pool are in use when the
        # target sizes its pool by what is left (--memory-ratio)
        self.proposer = proposer = load_proposer(settings, self.registry)
        if runner is None:
            runner, self.backend_name, self.backend_reason = load_runner(settings, self.registry, self.model)
        else:  # an embedder's own runner
            self.backend_name, self.backend_reason = type(runner).__name__, "runner passed in"
        if not isinstance(runner, ModelRunner):
            raise TypeError(f"backend {self.backend_name} built a {type(runner).__name__}, which is not a "
                            "minisgl.engine.batch.ModelRunner: a runner subclasses it")
        self.runner = runner
        self.threads = EngineThreads.start(str(runner.device), settings.tp_size, settings.cpu_threads, settings.cpu_set)
        self.eos_token_ids: list[int] = list(runner.eos_token_ids)
        self.max_context_len: int = settings.max_seq_len_override or runner.max_context_len
        cache_spec = self.registry.get("cache", settings.cache_type)
        self.cache_type = cache_spec.name
        self.cache: PrefixCache = cache_spec.load()(page_size=settings.page_size, settings=settings)
        policy_spec = self.registry.get("queue_policy", settings.queue_policy)
        self.queue_policy_name = policy_spec.name
        self.policy: QueuePolicy = policy_spec.load()()
        self.scheduler = Scheduler(
            runner, self.cache, self.policy, page_size=settings.page_size,
            max_running_requests=settings.max_running_requests, max_prefill_length=settings.max_prefill_length,
            max_context_len=self.max_context_len, decode_log_stride=settings.decode_log_stride,
            proposer=proposer, num_draft_tokens=settings.speculative_num_draft_tokens,
            tiers=build_tiers(settings, runner, self.cache, self.model, self.backend_name),
        )
        self.pool_tokens = self.scheduler.kv.pool.num_slots
        # drafts need the last token's value: a drafted step is processed before the next is built
        self.overlap = runner.supports_overlap and proposer is None
        self._launched: ScheduledBatch | None = None  # launched, not processed (overlap only)
        log.info(
            "engine ready: model=%s device=%s eos=%s context=%d kv=%d tokens (page %d) cache=%s queue=%s overlap=%s",
            self.model.name, runner.device, self.eos_token_ids, self.max_context_len, self.pool_tokens,
            settings.page_size, self.cache_type, self.queue_policy_name, "on" if self.overlap else "off",
        )
        self._inbox: collections.deque[tuple[str, Any]] = collections.deque()
        self._errors: list[EngineOutput] = []
        self._deferred: list[EngineOutput] = []
        self._warm_jobs = WarmJobs()
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self.requests_aborted_total = 0
        self.requests_finished_total = 0
        self._grammar_factory = load_selected("grammar_backend", settings.grammar_backend, self.registry)
        self.grammar_queue = GrammarQueue(self._grammar_backend, self.scheduler.masks)

    # ---- requests -----------------------------------------------------------------
    def add_request(self, req: EngineRequest) -> None:
        self._inbox.append(("add", req))

    def abort_request(self, rid: str, reason: str = "abort") -> None:
        self._inbox.append(("abort", (rid, reason)))

    def _error(self, rid: str, kind: ErrorKind, message: str, prompt_tokens: int = 0, emit: bool = True) -> None:
        log.warning("request %s rejected: %s", rid, message)
        if emit:  # a warm request's rejection has nobody to tell but the log
            self._errors.append(EngineOutput(rid=rid, finished=True, finish_reason="error", error=message,
                                             error_kind=kind.value, prompt_tokens=prompt_tokens))

    def _new_req(self, er: EngineRequest, warm_only: bool = False, grammar: Any = None) -> Req | None:
        """The scheduler's request for `er`, or None: refused (an error output), or waiting
        for its grammar, compiled off the loop (then `grammar` is its matcher)."""
        if self.scheduler.find(er.rid) is not None or self.grammar_queue.find(er.rid) is not None:
            self._error(er.rid, ErrorKind.INVALID_REQUEST, f"request id {er.rid!r} is already in use", emit=not warm_only)
            return None
        fault = request_fault(er, self.runner, self.backend_name, self.max_context_len, self.pool_tokens)
        if fault is not None:
            self._error(er.rid, *fault, len(er.input_ids), emit=not warm_only)
            return None
        p = er.sampling
        constraint = constraint_of(p)
        if constraint is not None and grammar is None:
            self.grammar_queue.submit(er, warm_only, constraint)
            return None
        max_new = min(p.max_new_tokens, self.pool_tokens - len(er.input_ids))
        if self.runner.kv_fair_share:
            # a request grows only to its share of the pool, so a full batch never retracts;
            # on unified memory that is where running out hurts most (AGGRESSIVE_MAX_NEW_TOKENS)
            share = self.pool_tokens // max(1, self.settings.max_running_requests)
            capped = max(1, share - len(er.input_ids))
            if capped < max_new:
                log.info("rid=%s max_new_tokens %d -> %d (AGGRESSIVE_MAX_NEW_TOKENS)", er.rid, max_new, capped)
                max_new = capped
        return Req(
            rid=er.rid, prompt_ids=list(er.input_ids), params=p, max_new_tokens=max_new,
            stop_ids=p.stop_ids(self.eos_token_ids), priority=er.priority,
            arrival_time=er.arrival_time or time.time(), seq=next(self._seq), warm_only=warm_only,
            images=list(er.images), grammar=grammar, pooling=er.pooling,
        )

    def _admit_compiled(self) -> None:
        """Requests whose matcher is ready join the scheduler; a grammar that failed is an error."""
        for c in self.grammar_queue.ready():
            er = c.request
            try:
                matcher = c.matcher.result()
            except Exception as exc:  # a bad grammar is the client's; anything else the backend's bug
                bad = isinstance(exc, GrammarError)
                self._error(er.rid, ErrorKind.INVALID_REQUEST if bad else ErrorKind.INTERNAL, f"{c.field}: " + (
                    str(exc) if bad else f"compiling it failed: {type(exc).__name__}: {exc}"), len(er.input_ids),
                    emit=not c.warm_only)
                continue
            req = self._new_req(er, c.warm_only, grammar=matcher)
            if req is not None:
                self.scheduler.add(req)

    def _grammar_backend(self) -> GrammarBackend:
        """--grammar-backend over the model's tokenizer."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(self.model.path), trust_remote_code=self.settings.trust_remote_code)
        return self._grammar_factory(tokenizer, self.runner.vocab_size)

    def _drain_inbox(self) -> list[EngineOutput]:
        outputs: list[EngineOutput] = []
        self._admit_compiled()
        while self._inbox:
            kind, payload = self._inbox.popleft()
            if kind == "add":
                req = self._new_req(payload)
                if req is not None:
                    self.scheduler.add(req)
                continue
            rid, reason = payload
            compiling = self.grammar_queue.cancel(rid)
            req = self.scheduler.find(rid)
            if compiling is not None:  # aborted before its grammar was ready: it held nothing
                prompt_tokens, cached, completion = len(compiling.request.input_ids), 0, 0
            elif req is not None and not req.warm_only:
                self.scheduler.finish(req, reason)
                prompt_tokens, cached, completion = len(req.prompt_ids), max(req.prompt_cached_tokens, 0), req.num_output
            else:
                continue  # already finished: nothing to free
            self.requests_aborted_total += reason == "abort"
            self.requests_finished_total += 1
            outputs.append(EngineOutput(rid=rid, finished=True, finish_reason=reason, prompt_tokens=prompt_tokens,
                                        cached_tokens=cached, completion_tokens=completion))
        return outputs

    # ---- the loop -----------------------------------------------------------------
    def step(self) -> list[EngineOutput]:
        self.threads.tick()
        with self._lock:
            outputs = self._deferred + self._drain_inbox() + self._errors
            self._deferred, self._errors = [], []
            if self.overlap:
                outputs += self._overlap_step()
            else:
                scheduled = self.scheduler.schedule()
                if scheduled is not None:
                    scheduled.result = self.runner.forward(scheduled.batch)
                    outputs += self._process(scheduled)
            done = self._warm_jobs.finished()
            if self.grammar_queue and not outputs and not self.scheduler.running and not self.scheduler.waiting:
                self.grammar_queue.wait(0.005)  # nothing to run but grammars compiling: no spinning
        for pending, cached_tokens in done:  # outside the lock: a callback may call back into the engine
            pending.resolve(cached_tokens)
        return outputs

    def _process(self, scheduled: ScheduledBatch) -> list[EngineOutput]:
        assert scheduled.result is not None
        produced = self.scheduler.process(scheduled, scheduled.result)
        self.requests_finished_total += sum(o.finished for o in produced)
        return produced

    def _overlap_step(self) -> list[EngineOutput]:
        """Launch step N+1, then read step N's tokens: the CPU work of building N+1 hides
        behind the device's work on N. Outputs (and finish detection) lag one step."""
        outputs: list[EngineOutput] = []
        previous = self._launched
        if previous is not None and any(r.needs_penalties for r in previous.sampled):
            # penalties read every earlier token on the host: resolve before building
            outputs += self._process(previous)
            previous = None
        self._launched = None
        scheduled = self.scheduler.schedule(previous)
        if scheduled is not None:
            scheduled.result = self.runner.forward(scheduled.batch)
            self._launched = scheduled
        if previous is not None:
            outputs += self._process(previous)
        if scheduled is not None and scheduled.result.sample_later is not None:
            # its grammar mask was being filled at launch; processing step N gave it the time
            scheduled.result = scheduled.result.sample_later()
        return outputs

    def has_work(self) -> bool:
        s = self.scheduler
        return bool(self._inbox or self._errors or self._deferred or s.waiting or s.running or self._launched
                    or self._warm_jobs or self.grammar_queue)

    # ---- cache --------------------------------------------------------------------
    def prefix_match_len(self, token_ids: list[int]) -> int:
        return self.cache.match_len(token_ids)

    def warm_async(self, token_id_lists: list[list[int]]) -> PendingCall:
        """insert_prefix, without waiting: queue one prefill-only request per list (behind
        user requests, see admission.py) and return a PendingCall that the step which finishes
        the last of them resolves with the number of tokens they added to the prefix cache."""
        if not isinstance(token_id_lists, list) or not all(isinstance(ids, list) for ids in token_id_lists):
            raise TypeError("token_id_lists must be a list of lists of token ids")
        reqs: list[Req] = []
        with self._lock:
            if self.cache_type != "naive":  # nothing would stay cached
                for i, ids in enumerate(token_id_lists):
                    # a one-token greedy request: its prefill puts all of `ids` in the KV, and its
                    # release inserts them into the cache; the sampled token is never emitted
                    er = EngineRequest(rid=f"__warm-{next(self._seq)}-{i}", input_ids=list(ids),
                                       sampling=SamplingParams(temperature=0.0, max_new_tokens=1))
                    req = self._new_req(er, warm_only=True) if ids else None
                    if req is not None:
                        self.scheduler.add(req)
                        reqs.append(req)
            return self._warm_jobs.start(reqs)

    def warm(self, token_id_lists: list[list[int]]) -> int:
        """insert_prefix, synchronously (`LLM.warm`): step until the warm requests are done.
        Outputs that other requests produce meanwhile are handed out by the next step()."""
        pending = self.warm_async(token_id_lists)
        while not pending.done:
            self._deferred.extend(self.step())
        return int(pending.result or 0)

    def flush_cache(self) -> int:
        """Drop the device's unlocked cached prefixes and the host tier; the tokens freed."""
        return self.flush_tiers()["flushed_tokens"]

    def flush_tiers(self, tier: str | None = None) -> dict[str, int]:
        """`flush_cache` of one tier (device, host, disk) or all; what each dropped."""
        with self._lock:
            return self.scheduler.flush_cache(tier)

    def cache_stats(self) -> dict:
        with self._lock:
            return self.scheduler.cache_stats()

    # ---- observability ------------------------------------------------------------
    def metrics(self) -> dict:
        return {
            "backend": self.backend_name,
            "cache_type": self.cache_type,
            "queue_policy": self.queue_policy_name,
            **self.scheduler.metrics(),
            "requests_aborted_total": self.requests_aborted_total,
            "requests_finished_total": self.requests_finished_total,
            "cache": self.cache.stats(),
        }

    def check_invariants(self) -> None:
        self.scheduler.check_invariants()

    def shutdown(self) -> None:
        if getattr(self, "scheduler", None) is not None and self.scheduler.tiers is not None:
            self.scheduler.tiers.close()  # the disk tier's queued writes, before the process ends
        if getattr(self, "threads", None) is not None:
            self.threads.restore()
            self.threads = None  # type: ignore[assignment]
        for part in (getattr(self, "proposer", None), getattr(self, "runner", None)):  # a draft model's runner too
            if part is not None:
                part.shutdown()
        self.proposer = self.runner = None  # type: ignore[assignment]
