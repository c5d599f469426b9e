"""The in-process engine every frontend drives (`minisgl.LLM`, the server's engine process).

It resolves the model, picks the backend (`--backend auto` logs its choice and why each
other backend was skipped), builds the runner, the prefix cache and the queue policy from
the plugin registry, and runs one scheduling step at a time. It deals only in token ids.

`add_request` and `abort_request` may be called from any thread at any moment: they land
in an inbox that the next `step()` drains. Everything else belongs to the thread that
calls `step()`.

Warming (insert_prefix) is asynchronous: `warm_async` queues one prefill-only request per
prefix and returns a PendingCall that a later `step()` resolves with the tokens cached.
The scheduler runs warm requests behind user requests (they get what prefill budget, rows
and KV user work leaves, and yield it back when a user request needs it), so a user
request streams while a long warm runs. `warm` is the synchronous form (`LLM.warm`).
"""

from __future__ import annotations

import collections
import itertools
import logging
import platform
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import torch

from ..cache.base import PrefixCache
from ..cpu_threads import EngineThreads, ThreadPlan, plan_threads, usable_cpus
from ..frontend.errors import ErrorKind
from ..grammar import GrammarBackend, GrammarError, constraint_of
from ..models import ResolvedModel, resolve_model
from ..plugins import Registry, get_registry, load_selected
from ..sampling_params import SamplingParams
from ..settings import Settings
from ..specs import BackendSpec
from .batch import ModelRunner
from .messages import IMAGE_PAD_BASE, EngineOutput, EngineRequest
from .queue_policy import QueuePolicy
from .request import Req
from .scheduler import ScheduledBatch, Scheduler

log = logging.getLogger("minisgl.engine")


def detect_device(settings: Settings) -> str:
    if settings.device != "auto":
        return settings.device
    if torch.cuda.is_available():
        return "cuda"
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        return "mps"
    return "cpu"


def select_backend(settings: Settings, registry: Registry, vision: bool = False) -> tuple[BackendSpec, str]:
    """The backend spec to use and a sentence saying why. `--backend auto` takes the
    available backend that ranks itself highest on the device (BackendSpec.auto_rank); for a
    vision-language model (`vision`), VLM_BACKEND when set, else the best of the backends
    that run those."""
    named, flag = settings.backend, "--backend / BACKEND_IMPL"
    if vision and named == "auto" and settings.vlm_backend != "auto":
        named, flag = settings.vlm_backend, "VLM_BACKEND"
    if named != "auto":
        spec = registry.get("backend", named)
        assert isinstance(spec, BackendSpec)
        if vision and not spec.vision:
            raise RuntimeError(f"backend {spec.name!r} ({flag}) runs text models only and this model is a "
                               "vision-language model; use --backend hf")
        reason = spec.availability(settings)
        if reason is not None:
            raise RuntimeError(f"backend {spec.name!r} ({flag}) cannot run here: {reason}")
        return spec, f"{flag.split(' ')[0]} {named}"
    device = detect_device(settings)
    specs = [s for s in registry.backends() if s.vision or not vision]
    ranked = sorted((s for s in specs if device in s.auto_rank), key=lambda s: (-s.auto_rank[device], s.name))
    chosen: BackendSpec | None = None
    skipped: dict[str, str] = {}
    for spec in ranked:
        why_not = spec.availability(settings)
        if why_not is None:
            chosen = spec
            break
        skipped[spec.name] = why_not
    # say why every other installed backend was not taken
    for other in specs:
        if other is chosen or other.name in skipped:
            continue
        why_not = other.availability(settings)
        if why_not is None and device not in other.auto_rank:
            why_not = f"available, but not ranked for --backend auto on {device} (ask for --backend {other.name})"
        elif why_not is None:
            why_not = f"available, but auto prefers {chosen.name} on {device}"
        skipped[other.name] = why_not
    note = "; ".join(f"{name}: {why}" for name, why in skipped.items())
    if chosen is None:
        known = ", ".join(s.name for s in specs) or "none installed"
        if vision:
            known += "; minisgl-backend-hf runs vision-language models"
        raise RuntimeError(f"no backend can run {'this vision-language model ' if vision else ''}on {device} "
                           f"(installed: {known}); {note}")
    for name, why in skipped.items():
        log.info("backend %s skipped: %s", name, why)
    return chosen, f"auto on {device}: {chosen.name}" + (f" (skipped {note})" if note else "")


def _image_fault(er: EngineRequest) -> str:
    """What is wrong with a request's images, or "": each image's runs must hold its pad id
    inside the prompt."""
    ids = er.input_ids
    for i, image in enumerate(er.images):
        if image.pad_id < IMAGE_PAD_BASE or not image.runs:
            return f"image {i} has no placeholder positions"
        for pos, length in image.runs:
            if pos < 0 or length <= 0 or pos + length > len(ids) or any(t != image.pad_id for t in ids[pos:pos + length]):
                return f"image {i}'s run ({pos}, {length}) does not hold its pad id in the prompt"
    return ""


class PendingCall:
    """The answer to an engine call that a later step() gives (warm_async). Callbacks run
    once, in the thread that steps the engine, outside the engine's lock."""

    def __init__(self) -> None:
        self.done = False
        self.result: Any = None
        self.error: str | None = None
        self._callbacks: list[Callable[[PendingCall], None]] = []

    def add_done_callback(self, fn: Callable[[PendingCall], None]) -> None:
        if self.done:
            fn(self)
        else:
            self._callbacks.append(fn)

    def resolve(self, result: Any = None, error: str | None = None) -> None:
        if self.done:
            return
        self.done, self.result, self.error = True, result, error
        callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn(self)
            except Exception:  # one callback's bug must not stop the engine loop
                log.exception("engine call callback failed")


class _WarmJob:
    """One warm call: its prefill-only requests and the PendingCall they answer."""

    def __init__(self, reqs: list[Req]) -> None:
        self.reqs = reqs
        self.pending = PendingCall()

    @property
    def finished(self) -> bool:
        return all(r.finished_reason is not None for r in self.reqs)

    @property
    def cached_tokens(self) -> int:
        return sum(r.warm_tokens for r in self.reqs)


@dataclass
class _Compiling:
    request: EngineRequest
    warm_only: bool
    matcher: Future  # the grammar backend's matcher for the request's constraint


class Engine:
    def __init__(self, settings: Settings, registry: Registry | None = None, *, runner: ModelRunner | None = None) -> None:
        self.settings = settings
        self.registry = registry or get_registry()
        self.model: ResolvedModel = resolve_model(settings.model_path, dummy_weight=settings.dummy_weight)
        if runner is None:
            spec, self.backend_reason = select_backend(settings, self.registry, vision=self.model.takes_images)
            self.backend_name = spec.name
            if settings.tp_size > 1 and not spec.tensor_parallel:
                able = [b.name for b in self.registry.backends() if b.tensor_parallel]
                raise ValueError(f"--tp-size {settings.tp_size}: backend {spec.name} runs on one device; tensor "
                                 f"parallelism needs --backend {' or '.join(able) or '(none installed)'}")
            log.info("backend: %s (%s)", spec.name, self.backend_reason)
            runner = spec.load()(settings, self.model)
        else:  # an embedder's own runner
            self.backend_name, self.backend_reason = type(runner).__name__, "runner passed in"
        self.runner = runner
        self.threads = EngineThreads(ThreadPlan.from_env() or plan_threads(
            cpus=usable_cpus(), tp_size=settings.tp_size, cpu_threads=settings.cpu_threads, cpu_set=settings.cpu_set))
        if str(runner.device).split(":")[0] == "cpu":
            self.threads.apply()
        else:
            self.threads.host_only(str(runner.device))
        self.eos_token_ids: list[int] = list(runner.eos_token_ids)
        self.max_context_len: int = settings.max_seq_len_override or runner.max_context_len
        cache_spec = self.registry.get("cache", settings.cache_type)
        self.cache_type = cache_spec.name
        self.cache: PrefixCache = cache_spec.load()(page_size=settings.page_size, settings=settings)
        policy_spec = self.registry.get("queue_policy", settings.queue_policy)
        self.queue_policy_name = policy_spec.name
        self.policy: QueuePolicy = policy_spec.load()()
        self.scheduler = Scheduler(
            runner,
            self.cache,
            self.policy,
            page_size=settings.page_size,
            max_running_requests=settings.max_running_requests,
            max_prefill_length=self._prefill_budget(settings, runner),
            max_context_len=self.max_context_len,
            decode_log_stride=settings.decode_log_stride,
        )
        # overlap scheduling when the runner's forward is asynchronous (see Scheduler)
        self.overlap = bool(getattr(runner, "supports_overlap", False))
        self._launched: ScheduledBatch | None = None  # launched, not processed (overlap only)
        log.info(
            "engine ready: model=%s device=%s eos=%s context=%d kv=%d tokens (page %d) cache=%s queue=%s overlap=%s",
            self.model.name, runner.device, self.eos_token_ids, self.max_context_len,
            self.scheduler.pool.num_slots, settings.page_size, self.cache_type, self.queue_policy_name,
            "on" if self.overlap else "off",
        )
        self._inbox: collections.deque[tuple[str, Any]] = collections.deque()
        self._errors: list[EngineOutput] = []
        self._deferred: list[EngineOutput] = []
        self._warm_jobs: list[_WarmJob] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self.requests_aborted_total = 0
        self.requests_finished_total = 0
        self._grammar_factory = load_selected("grammar_backend", settings.grammar_backend, self.registry)
        self._grammars: GrammarBackend | None = None
        self._compiler: ThreadPoolExecutor | None = None
        self._compiling: list[_Compiling] = []  # requests waiting for their grammar's matcher

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

    def _known(self, rid: str) -> Req | None:
        s = self.scheduler
        return s.waiting.get(rid) or next((r for r in s.running if r.rid == rid), None)

    @staticmethod
    def _prefill_budget(settings: Settings, runner: ModelRunner) -> int:
        """--max-prefill-length, lowered to the runner's own cap when it has one (backend-mlx's
        MLX_PREFILL_STEP_SIZE), so chunked prefill splits where the backend wants it to."""
        cap = getattr(runner, "max_prefill_tokens", None)
        if cap and cap < settings.max_prefill_length:
            log.info("prefill chunks of at most %d tokens (the backend's limit; --max-prefill-length is %d)",
                     cap, settings.max_prefill_length)
            return int(cap)
        return settings.max_prefill_length

    def _aggressive_cap(self, prompt_len: int) -> int | None:
        """When the runner asks for it (`kv_fair_share`, backend-mlx's AGGRESSIVE_MAX_NEW_TOKENS),
        a request may grow only to its fair share of the KV pool, so a full batch never has
        to retract; on unified memory that is where running out hurts most."""
        if not getattr(self.runner, "kv_fair_share", False):
            return None
        share = self.scheduler.pool.num_slots // max(1, self.settings.max_running_requests)
        return max(1, share - prompt_len)

    def _new_req(self, er: EngineRequest, warm_only: bool = False, grammar: Any = None) -> Req | None:
        """Admit a request the request layer has already validated and fitted to the
        context (minisgl.frontend); what is checked here is what only the engine knows
        (its pool, its request ids) and what a malformed frame could break. A request with
        a constraint first waits for its matcher, compiled off the loop (`grammar`)."""
        ids, p = er.input_ids, er.sampling
        if self._known(er.rid) is not None or any(c.request.rid == er.rid for c in self._compiling):
            self._error(er.rid, ErrorKind.INVALID_REQUEST, f"request id {er.rid!r} is already in use", emit=not warm_only)
            return None
        vocab = getattr(self.runner, "vocab_size", None)
        pads = {image.pad_id for image in er.images}
        bad = next((t for t in ids if t < 0 or (vocab and t >= vocab and t not in pads)), None)
        if not ids or bad is not None or p.max_new_tokens is None:
            why = ("an empty prompt" if not ids else "no max_new_tokens" if bad is None
                   else f"token id {bad} is outside the vocabulary [0, {vocab})")
            self._error(er.rid, ErrorKind.INVALID_REQUEST, f"malformed engine request: {why}", len(ids), emit=not warm_only)
            return None
        if er.images and not getattr(self.runner, "supports_images", False):
            self._error(er.rid, ErrorKind.UNAVAILABLE, f"backend {self.backend_name} takes text only; serve "
                        "vision-language models with --backend hf", len(ids), emit=not warm_only)
            return None
        fault = _image_fault(er)
        if fault:
            self._error(er.rid, ErrorKind.INVALID_REQUEST, f"malformed engine request: {fault}", len(ids),
                        emit=not warm_only)
            return None
        pool_tokens = self.scheduler.pool.num_slots
        if len(ids) + p.max_new_tokens > self.max_context_len or len(ids) >= pool_tokens:
            self._error(er.rid, ErrorKind.CONTEXT_LENGTH_EXCEEDED,
                        f"{len(ids)} prompt tokens + {p.max_new_tokens} new tokens do not fit: the context is "
                        f"{self.max_context_len} tokens and the KV pool {pool_tokens} (raise --num-pages or "
                        "--memory-ratio)", len(ids), emit=not warm_only)
            return None
        constraint = constraint_of(p)
        if constraint is not None and grammar is None:
            if self._compiler is None:
                self._compiler = ThreadPoolExecutor(1, thread_name_prefix="grammar-compile")
            # the first one also builds the backend's view of the tokenizer: seconds, never on the loop
            self._compiling.append(_Compiling(er, warm_only, self._compiler.submit(self._matcher, *constraint)))
            return None
        max_new = min(p.max_new_tokens, pool_tokens - len(ids))
        aggressive = self._aggressive_cap(len(ids))
        if aggressive is not None and aggressive < max_new:
            log.info("rid=%s max_new_tokens %d -> %d (AGGRESSIVE_MAX_NEW_TOKENS)", er.rid, max_new, aggressive)
            max_new = aggressive
        return Req(
            rid=er.rid,
            prompt_ids=list(ids),
            params=p,
            max_new_tokens=max_new,
            stop_ids=p.stop_ids(self.eos_token_ids),
            priority=er.priority,
            arrival_time=er.arrival_time or time.time(),
            seq=next(self._seq),
            warm_only=warm_only,
            images=list(er.images),
            grammar=grammar,
        )

    def _matcher(self, field: str, source: str) -> Any:
        return self.grammars.matcher(field, source)

    def _admit_compiled(self) -> None:
        """Requests whose matcher is ready join the scheduler; a grammar that failed is an error."""
        ready = [c for c in self._compiling if c.matcher.done()]
        self._compiling = [c for c in self._compiling if not c.matcher.done()]
        for c in ready:
            er = c.request
            try:
                matcher = c.matcher.result()
            except GrammarError as exc:
                self._error(er.rid, ErrorKind.INVALID_REQUEST, f"{constraint_of(er.sampling)[0]}: {exc}",
                            len(er.input_ids), emit=not c.warm_only)
                continue
            req = self._new_req(er, c.warm_only, grammar=matcher)
            if req is not None:
                self.scheduler.add(req)

    @property
    def grammars(self) -> GrammarBackend:
        """--grammar-backend over the model's tokenizer, built with the first constrained request."""
        if self._grammars is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(self.model.path),
                                                      trust_remote_code=self.settings.trust_remote_code)
            self._grammars = self._grammar_factory(tokenizer, getattr(self.runner, "vocab_size", None))
            self.scheduler.grammars = self._grammars
        return self._grammars

    def _drain_inbox(self) -> list[EngineOutput]:
        outputs: list[EngineOutput] = []
        self._admit_compiled()
        while self._inbox:
            kind, payload = self._inbox.popleft()
            if kind == "add":
                req = self._new_req(payload)
                if req is not None:
                    self.scheduler.add(req)
            else:
                rid, reason = payload
                req = self._known(rid)
                compiling = next((c for c in self._compiling if c.request.rid == rid), None)
                if compiling is not None:  # aborted before its grammar was ready: it held nothing
                    self._compiling.remove(compiling)
                    self.requests_finished_total += 1
                    self.requests_aborted_total += reason == "abort"
                    outputs.append(EngineOutput(rid=rid, finished=True, finish_reason=reason,
                                                prompt_tokens=len(compiling.request.input_ids)))
                    continue
                if req is None or req.warm_only:
                    continue  # already finished: nothing to free
                self.scheduler.finish(req, reason)
                self.requests_aborted_total += reason == "abort"
                self.requests_finished_total += 1
                outputs.append(
                    EngineOutput(
                        rid=rid,
                        finished=True,
                        finish_reason=reason,
                        prompt_tokens=len(req.prompt_ids),
                        cached_tokens=max(req.prompt_cached_tokens, 0),
                        completion_tokens=req.num_output,
                    )
                )
        return outputs

    # ---- the loop -----------------------------------------------------------------
    def step(self) -> list[EngineOutput]:
        self.threads.tick()
        with self._lock:
            outputs = self._deferred + self._drain_inbox()
            self._deferred = []
            outputs += self._errors
            self._errors = []
            if self.overlap:
                outputs += self._overlap_step()
            else:
                scheduled = self.scheduler.schedule()
                if scheduled is not None:
                    scheduled.result = self.runner.forward(scheduled.batch)
                    outputs += self._process(scheduled)
            done = self._finished_warm_jobs()
            if self._compiling and not outputs and not self.scheduler.running and not self.scheduler.waiting:
                # nothing to run but grammars compiling: wait for one a moment instead of spinning
                wait([c.matcher for c in self._compiling], timeout=0.005, return_when=FIRST_COMPLETED)
        for job in done:  # outside the lock: a callback may call back into the engine
            job.pending.resolve(job.cached_tokens)
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
                    or self._warm_jobs or self._compiling)

    # ---- cache --------------------------------------------------------------------
    def prefix_match_len(self, token_ids: list[int]) -> int:
        return self.cache.match_len(token_ids)

    def warm_async(self, token_id_lists: list[list[int]]) -> PendingCall:
        """insert_prefix, without waiting: queue one prefill-only request per list (behind
        user requests, see Scheduler) and return a PendingCall that the step which finishes
        the last of them resolves with the number of tokens they added to the prefix cache."""
        if not isinstance(token_id_lists, list) or not all(isinstance(ids, list) for ids in token_id_lists):
            raise TypeError("token_id_lists must be a list of lists of token ids")
        with self._lock:
            job = _WarmJob([])
            if self.cache_type != "naive":  # nothing would stay cached
                for i, ids in enumerate(token_id_lists):
                    if not ids:
                        continue
                    rid = f"__warm-{next(self._seq)}-{i}"
                    # a one-token greedy request: its prefill puts all of `ids` in the KV, and its
                    # release inserts them into the cache; the sampled token is never emitted
                    er = EngineRequest(rid=rid, input_ids=list(ids),
                                       sampling=SamplingParams(temperature=0.0, max_new_tokens=1))
                    req = self._new_req(er, warm_only=True)
                    if req is not None:
                        self.scheduler.add(req)
                        job.reqs.append(req)
            if job.reqs:
                self._warm_jobs.append(job)
        if not job.reqs:
            job.pending.resolve(0)
        return job.pending

    def _finished_warm_jobs(self) -> list[_WarmJob]:
        done = [job for job in self._warm_jobs if job.finished]
        if done:
            self._warm_jobs = [job for job in self._warm_jobs if job not in done]
        return done

    def warm(self, token_id_lists: list[list[int]]) -> int:
        """insert_prefix, synchronously (`LLM.warm`): step until the warm requests are done.
        Outputs that other requests produce meanwhile are handed out by the next step()."""
        pending = self.warm_async(token_id_lists)
        while not pending.done:
            self._deferred.extend(self.step())
        return int(pending.result or 0)

    def flush_cache(self) -> int:
        with self._lock:
            freed = self.cache.flush()
            self.scheduler.pool.free_slots(freed)
            log.info("prefix cache flushed: %d tokens freed", len(freed))
            return len(freed)

    # ---- observability ------------------------------------------------------------
    def metrics(self) -> dict:
        s = self.scheduler
        c = s.counters
        return {
            "backend": self.backend_name,
            "cache_type": self.cache_type,
            "queue_policy": self.queue_policy_name,
            "num_running_reqs": len(s.running),
            "num_waiting_reqs": len(s.waiting),
            "kv_total_tokens": s.pool.num_slots,
            "kv_used_tokens": s.kv_used_tokens(),
            "kv_cached_tokens": self.cache.total_tokens,
            "kv_free_tokens": s.pool.free_pages * s.P,
            "prompt_tokens_total": c["prompt_tokens_total"],
            "generation_tokens_total": c["generation_tokens_total"],
            "cached_tokens_total": c["cached_tokens_total"],
            "cache_hits": c["cache_hits"],
            "cache_misses": c["cache_misses"],
            "retractions_total": c["retractions_total"],
            "evicted_tokens_total": c["evicted_tokens_total"],
            "requests_aborted_total": self.requests_aborted_total,
            "requests_finished_total": self.requests_finished_total,
            "steps_total": s.steps,
            "cache": self.cache.stats(),
        }

    def check_invariants(self) -> None:
        self.scheduler.check_invariants()

    def shutdown(self) -> None:
        if getattr(self, "threads", None) is not None:
            self.threads.restore()
            self.threads = None  # type: ignore[assignment]
        runner = getattr(self, "runner", None)
        if runner is not None:
            runner.shutdown()
            self.runner = None  # type: ignore[assignment]
