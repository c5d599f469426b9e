"""One front-door request on its way to the engine and back.

`Frontend.generation(rid, prompts, params)` is where a request is checked and shaped, once
for every door: the sampling values are validated, each prompt is fitted to the context
(a prompt that cannot fit is refused, like vLLM, never clamped; an unset max_new_tokens
becomes what fits, at most the default), and n > 1 fans out into n samples with seeds
seed + i. The result is a `Generation`: one `Sample` per engine request. A structured-output
constraint is found once per request and checked against the tokenizer (a worker thread
builds the grammar backend's view of it, once per process).

Back from the engine, `Generation.update(output)` folds each EngineOutput into a `Delta`:
incremental detokenization, stop strings (the caller then aborts that engine request with
reason "stop"), stop tokens (they count as completion tokens and stay in token_ids, but
their text is never part of the output, as in OpenAI and vLLM), the reasoning split and
the tool calls of chat answers (--reasoning-parser, tools), logprobs, finish reasons,
typed errors, and usage.

`Frontend.embedding(rid, prompts, pooling)` shapes an embedding request the same way: one
prefill-only Sample per prompt whose engine answer is its pooled final hidden states
(`Generation.embeddings` reads them, L2-normalised where asked)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

import msgspec
import numpy as np

from ..engine.messages import EngineOutput, EngineRequest, ImageInput
from ..grammar import GrammarBackend, GrammarError, LLGuidance, constraint_of
from ..plugins import load_selected
from ..sampling_params import Pooling, SamplingParams
from .errors import ErrorKind, RequestError, invalid
from .tool_calls import ToolCall, ToolCallDelta, ToolUse, model_format, tool_use


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # the most likely tokens at this position, with their logprobs


@dataclass
class Delta:
    """What one engine output adds to one sample."""

    index: int  # the sample's place in its request (prompt i, sample j: i * n + j)
    text: str = ""
    reasoning: str = ""  # the part of the new text that is thinking (with a reasoning parser)
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None  # when the request asked for them
    finish_reason: str | None = None  # set on the sample's last delta: stop | length | tool_calls | abort | error
    error: RequestError | None = None  # with finish_reason "error"
    stop_hit: bool = False  # a stop string matched: abort this sample's engine request with "stop"


@dataclass
class Sample:
    """One engine request: one prompt, one of its n samples, and what came back so far."""

    rid: str
    index: int
    prompt_index: int
    prompt_ids: list[int]
    params: SamplingParams  # n = 1, its own seed, max_new_tokens set
    detok: Any
    stop_ids: frozenset[int]
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    text: str = ""  # the answer (without its thinking when `splitter` is set)
    reasoning: str = ""
    splitter: Any = None  # a ReasoningSplitter, for chat answers under --reasoning-parser
    tool_parser: Any = None  # a ToolCallParser, for chat answers with tools
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    error: RequestError | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    first_token_at: float | None = None
    queue_time_s: float | None = None  # the engine's, with its first output
    images: list[ImageInput] = field(default_factory=list)
    pooling: Pooling | None = None  # an embedding request's: prefill only, its hidden states pooled
    embedding: bytes | None = None  # its answer: little-endian float32 values

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def reasoning_content(self) -> str | None:
        """The thinking split off this answer; None when no reasoning parser split it."""
        return self.reasoning if self.splitter is not None else None

    @property
    def stop_string(self) -> str | None:
        """The stop string that ended this answer, if one did."""
        return self.detok.matched

    @property
    def wants_logprobs(self) -> bool:
        return self.params.logprobs or self.params.top_logprobs > 0

    def update(self, out: EngineOutput) -> Delta | None:
        if self.finished:
            return None
        self.prompt_tokens = out.prompt_tokens or self.prompt_tokens
        self.cached_tokens = max(self.cached_tokens, out.cached_tokens)
        if out.new_token_ids and self.queue_time_s is None:
            self.queue_time_s = out.queue_time_s
        if out.finish_reason == "error":
            self.finish_reason = "error"
            self.error = RequestError(out.error_kind or ErrorKind.INTERNAL, out.error or "engine error")
            return Delta(self.index, finish_reason="error", error=self.error)
        if out.embedding is not None:
            self.embedding = out.embedding
        new = list(out.new_token_ids)
        if new and self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.token_ids.extend(new)
        delta = Delta(self.index, token_ids=new)
        if self.wants_logprobs and out.logprobs is not None:
            tops = out.top_logprobs or [[] for _ in new]
            delta.logprobs = [TokenLogprob(t, lp, [tuple(x) for x in top])
                              for t, lp, top in zip(new, out.logprobs, tops, strict=False)]
            self.logprobs.extend(delta.logprobs)
        visible = new
        if out.finished and out.finish_reason == "stop" and new and new[-1] in self.stop_ids:
            visible = new[:-1]
        delta.text, delta.stop_hit = self.detok.push(visible)
        if delta.stop_hit:
            delta.finish_reason = "stop"
        elif out.finished:
            delta.text += self.detok.finish()
            delta.finish_reason = out.finish_reason or "stop"
        last = delta.finish_reason is not None
        if self.splitter is not None:
            delta.reasoning, delta.text = _through(self.splitter, delta.text, last)
            self.reasoning += delta.reasoning
        if self.tool_parser is not None:
            delta.text, delta.tool_calls = _through(self.tool_parser, delta.text, last)
            for call in delta.tool_calls:
                ToolCall.fold(self.tool_calls, call)
            if self.tool_parser.done and not last:  # it takes no more of the answer: end it here
                delta.stop_hit, delta.finish_reason = True, "stop"
            if delta.finish_reason == "stop" and self.tool_calls:
                delta.finish_reason = "tool_calls"
        self.text += delta.text
        self.finish_reason = delta.finish_reason
        if not (delta.text or delta.reasoning or delta.tool_calls or delta.token_ids or delta.finish_reason):
            return None
        return delta


def _through(parser: Any, text: str, last: bool) -> tuple[Any, Any]:
    """A streaming parser's two outputs for `text` (push), with what it held back when the
    answer ends (finish): the reasoning splitter's (reasoning, content), the tool-call
    parser's (content, call deltas)."""
    first, second = parser.push(text)
    if last:
        more_first, more_second = parser.finish()
        first, second = first + more_first, second + more_second
    return first, second


class Generation:
    """The samples of one front-door request and their usage."""

    def __init__(self, rid: str, samples: list[Sample], priority: int = 0) -> None:
        self.rid = rid
        self.samples = samples
        self.priority = priority
        self.started_at = time.perf_counter()
        self.lease: Any = None  # what the door that sent it holds for it (the server's inflight slots)
        self._by_rid = {s.rid: s for s in samples}

    def engine_requests(self) -> list[EngineRequest]:
        now = time.time()
        return [EngineRequest(rid=s.rid, input_ids=s.prompt_ids, sampling=s.params, priority=self.priority,
                              arrival_time=now, images=s.images, pooling=s.pooling) for s in self.samples]

    def embeddings(self, normalize: bool) -> list[np.ndarray]:
        """The samples' embeddings (float32), in order; with `normalize`, of unit L2 norm."""
        vectors = []
        for s in self.samples:
            if s.embedding is None:
                raise RequestError(ErrorKind.INTERNAL, f"engine request {s.rid} finished without its embedding")
            v = np.frombuffer(s.embedding, dtype="<f4")
            if normalize:
                v = v / max(float(np.linalg.norm(v)), 1e-12)  # as torch.nn.functional.normalize
            vectors.append(v.astype("<f4"))
        return vectors

    def update(self, out: EngineOutput) -> Delta | None:
        """Fold one engine output in; None when it adds nothing (or is not ours)."""
        sample = self._by_rid.get(out.rid)
        return None if sample is None else sample.update(out)

    def take(self, out: EngineOutput, abort: Callable[[str, str], Any]) -> Delta | None:
        """`update` for the door that runs the engine requests: a sample's error is raised,
        and a matched stop string ends its engine request (`abort(rid, "stop")`)."""
        delta = self.update(out)
        if delta is not None and delta.error is not None:
            raise delta.error
        if delta is not None and delta.stop_hit:
            abort(out.rid, "stop")
        return delta

    def scale_max_new_tokens(self, factor: float) -> bool:
        """Shrink every sample's budget by `factor`, to at least one token (before it is
        sent: ADAPTIVE_MAX_NEW_TOKENS). True when some budget changed."""
        changed = False
        for s in self.samples:
            cap = max(1, int(s.params.max_new_tokens * factor))
            if cap < s.params.max_new_tokens:
                s.params = msgspec.structs.replace(s.params, max_new_tokens=cap,
                                                   min_new_tokens=min(s.params.min_new_tokens, cap))
                changed = True
        return changed

    @property
    def finished(self) -> bool:
        return all(s.finished for s in self.samples)

    def unfinished(self) -> list[Sample]:
        return [s for s in self.samples if not s.finished]

    # ---- usage (OpenAI's: n samples of one prompt count that prompt once) ------------------
    @property
    def prompt_tokens(self) -> int:
        seen: dict[int, int] = {}
        for s in self.samples:
            seen.setdefault(s.prompt_index, s.prompt_tokens or len(s.prompt_ids))
        return sum(seen.values())

    @property
    def cached_tokens(self) -> int:
        seen: dict[int, int] = {}
        for s in self.samples:
            seen[s.prompt_index] = max(seen.get(s.prompt_index, 0), s.cached_tokens)
        return sum(seen.values())

    @property
    def completion_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.samples)

    @property
    def first_token_at(self) -> float | None:
        return min((s.first_token_at for s in self.samples if s.first_token_at is not None), default=None)

    @property
    def queue_time_s(self) -> float | None:
        """The longest any sample waited in the engine's queue (None before any was admitted)."""
        return max((s.queue_time_s for s in self.samples if s.queue_time_s is not None), default=None)


def selected_plugins(settings: Any) -> dict[str, Any]:
    """The request layer's plugins that settings choose (--reasoning-parser,
    --tool-call-parser, --grammar-backend), as Frontend's keywords. A name that no plugin
    registers raises SelectionError here, before any model loads."""
    return {"reasoning": load_selected("reasoning_parser", settings.reasoning_parser),
            "tool_calls": load_selected("tool_call_parser", settings.tool_call_parser),
            "grammar_backend": load_selected("grammar_backend", settings.grammar_backend)}


class Frontend:
    """The request layer for one model: its tokenizer and context, the server's defaults."""

    def __init__(self, tokenizer: Any, *, max_context_len: int, eos_token_ids: Sequence[int], max_new_tokens_default: int,
                 reasoning: Callable[[], Any] | None = None, tool_calls: Any = None,
                 grammar_backend: Callable[..., GrammarBackend] = LLGuidance, vocab_size: int | None = None,
                 kv_pool_tokens: int | None = None, max_logprobs: int | None = None, embedding_size: int = 0) -> None:
        self.tokenizer = tokenizer
        self.max_context_len = max_context_len
        self.embedding_size = embedding_size  # the engines' embedding width (0: their backend computes none)
        # admission by cost (`check_cost`): the KV pool a request runs on (the smallest of the
        # replicas') and the logprob entries one request may ask for; None: unbounded
        self.kv_pool_tokens = kv_pool_tokens
        self.max_logprobs = max_logprobs
        self.eos_token_ids = list(eos_token_ids)
        self.max_new_tokens_default = max_new_tokens_default
        self.reasoning = reasoning  # a reasoning parser's factory (--reasoning-parser), for chat answers
        # the model's tool-call format (--tool-call-parser, else its chat template's), and
        # whether it writes a request's tools into the messages (the template ignores them)
        self.tool_calls, self.writes_tools = model_format(tool_calls, tokenizer.chat_template_text,
                                                          tokenizer.renders_tools)
        self._grammar_backend = grammar_backend
        self.vocab_size = vocab_size  # the model's logits rows, where known: an engine in this process shares the view
        self._grammars: GrammarBackend | None = None

    @property
    def grammars(self) -> GrammarBackend:
        """Checks structured-output constraints against this tokenizer (built on first use)."""
        if self._grammars is None:
            self._grammars = self._grammar_backend(self.tokenizer.tokenizer, self.vocab_size)
        return self._grammars

    def tool_use(self, tools: Sequence[Any] | None, tool_choice: Any = None, parallel_tool_calls: bool = True) -> ToolUse | None:
        """A chat request's tools, checked (see tool_calls.tool_use): `.tools` go to the chat
        template, the whole ToolUse to `generation`."""
        return tool_use(self.tool_calls, tools, tool_choice, parallel_tool_calls, self.writes_tools)

    def generation(self, rid: str, prompts: list[list[int]], params: SamplingParams, *,
                   names: Mapping[str, str] | None = None, priority: int = 0,
                   images: Sequence[list[ImageInput]] | None = None, separate_reasoning: bool = False,
                   tools: ToolUse | None = None) -> Generation:
        """Validate, fit each prompt, fan out n. `names` maps SamplingParams fields to the
        front door's own names, so errors name what the client sent. `images[p]` are the
        images of prompt p (a chat prompt's ChatPrompt.images). With `separate_reasoning`
        (chat answers) the thinking is split off when the model has a reasoning parser;
        with `tools` (Frontend.tool_use) calls are forced and parsed as they ask."""
        names = dict(names or {})
        params, constraint = self._validated(params, names, tools)
        if constraint is not None:
            self._check_grammar(constraint, names)
        return self._fan_out(rid, prompts, params, names, tools, priority=priority, images=images,
                             separate_reasoning=separate_reasoning)

    async def generation_off_loop(self, rid: str, prompts: list[list[int]], params: SamplingParams, *,
                                  names: Mapping[str, str] | None = None, tools: ToolUse | None = None,
                                  **shape: Any) -> Generation:
        """`generation` (the same keywords) for an event loop: a grammar is checked on a worker
        thread (the process's first builds the grammar backend's view of the tokenizer: seconds)."""
        names = dict(names or {})
        params, constraint = self._validated(params, names, tools)
        if constraint is not None:
            await asyncio.to_thread(self._check_grammar, constraint, names)
        return self._fan_out(rid, prompts, params, names, tools, **shape)

    def _validated(self, params: SamplingParams, names: dict[str, str],
                   tools: ToolUse | None) -> tuple[SamplingParams, tuple[str, str] | None]:
        """The checked parameters (with the grammar that forced tool calls need) and the
        request's one constraint, (field, source) or None."""
        params.validate(names, self.tokenizer.vocab_size)
        constraint = constraint_of(params)
        if tools is None or tools.grammar is None:
            return params, constraint
        if constraint is not None:
            name = names.get(constraint[0], constraint[0])
            raise invalid(f"tool_choice 'required' or a named function forces the answer's shape: give no "
                          f"'{name}' with it", name)
        names["ebnf"] = "tools"
        return msgspec.structs.replace(params, ebnf=tools.grammar), ("ebnf", tools.grammar)

    def _check_grammar(self, constraint: tuple[str, str], names: Mapping[str, str]) -> None:
        name = names.get(constraint[0], constraint[0])
        try:
            self.grammars.check(*constraint)
        except GrammarError as exc:
            raise invalid(f"'{name}' cannot be compiled: {exc}", name) from None

    def _fan_out(self, rid: str, prompts: list[list[int]], params: SamplingParams, names: Mapping[str, str],
                 tools: ToolUse | None, priority: int = 0, images: Sequence[list[ImageInput]] | None = None,
                 separate_reasoning: bool = False) -> Generation:
        stop_ids = params.stop_ids(self.eos_token_ids)
        budgets = [self.fit_context(len(ids), params, names) for ids in prompts]
        self.check_cost([len(ids) for ids in prompts], budgets, params, names)
        samples = []
        for p, ids in enumerate(prompts):
            max_new = budgets[p]
            for j in range(params.n):
                samples.append(Sample(
                    rid=f"{rid}-{p * params.n + j}", index=p * params.n + j, prompt_index=p, prompt_ids=ids,
                    params=params.for_sample(j, max_new), stop_ids=stop_ids,
                    detok=self.tokenizer.detokenizer(skip_special_tokens=params.skip_special_tokens, stop=params.stop),
                    images=list(images[p]) if images else [],
                    splitter=self.reasoning() if separate_reasoning and self.reasoning is not None else None,
                    tool_parser=tools.parser() if tools is not None and tools.parser is not None else None,
                ))
        return Generation(rid, samples, priority)

    def embedding(self, rid: str, prompts: list[list[int]], pooling: str, *, backend: str = "",
                  dimensions: int | None = None, names: Mapping[str, str] | None = None) -> Generation:
        """An embedding request: one prefill-only sample per prompt, answered with the prompt's
        final hidden states pooled ("last" token or "mean" of all), checked like a generation's
        prompt (context, KV pool). `dimensions` must be the model's width: the vectors are never
        truncated (only Matryoshka-trained models keep their meaning cut short)."""
        names = dict(names or {})
        names.setdefault("max_new_tokens", names.get("prompt", "prompt"))  # what to reduce is the input
        if pooling not in get_args(Pooling):
            raise invalid(f"pooling {pooling!r} is not one of {', '.join(get_args(Pooling))}", "pooling")
        if not self.embedding_size:
            raise invalid(f"backend {backend or 'in use'} does not compute embeddings; serve the model with "
                          "--backend hf for /v1/embeddings", names.get("model", "model"))
        if dimensions is not None and dimensions != self.embedding_size:
            name = names.get("dimensions", "dimensions")
            raise invalid(f"'{name}' must be this model's embedding size, {self.embedding_size}: its embeddings "
                          "cannot be shortened", name)
        params = SamplingParams(max_new_tokens=0, temperature=0.0)
        budgets = [self.fit_context(len(ids), params, names, generates=False) for ids in prompts]
        self.check_cost([len(ids) for ids in prompts], budgets, params, names)
        samples = [Sample(rid=f"{rid}-{p}", index=p, prompt_index=p, prompt_ids=ids, params=params,
                          detok=self.tokenizer.detokenizer(), stop_ids=frozenset(), pooling=pooling)
                   for p, ids in enumerate(prompts)]
        return Generation(rid, samples)

    def fit_context(self, prompt_len: int, params: SamplingParams, names: Mapping[str, str],
                    generates: bool = True) -> int:
        """The completion budget of one prompt, or CONTEXT_LENGTH_EXCEEDED (a prompt that
        `generates` needs room for one more token)."""
        ctx = self.max_context_len
        if prompt_len > ctx or (generates and prompt_len == ctx):
            raise RequestError(ErrorKind.CONTEXT_LENGTH_EXCEEDED,
                               f"the prompt has {prompt_len} tokens; this model's maximum context length is {ctx} "
                               "tokens" + (" (at least one more must be generated)" if generates else ""),
                               names.get("prompt", "prompt"))
        room = ctx - prompt_len
        if params.max_new_tokens is None:
            max_new = min(self.max_new_tokens_default, room)
            if self.kv_pool_tokens:  # a default the client did not ask for never exceeds the pool
                max_new = max(1, min(max_new, (self.kv_pool_tokens - prompt_len) // params.n))
        elif params.max_new_tokens > room:
            name = names.get("max_new_tokens", "max_new_tokens")
            raise RequestError(ErrorKind.CONTEXT_LENGTH_EXCEEDED,
                               f"this model's maximum context length is {ctx} tokens; you requested "
                               f"{prompt_len + params.max_new_tokens} tokens ({prompt_len} in the prompt, "
                               f"{params.max_new_tokens} for the completion); reduce the prompt or '{name}'", name)
        else:
            max_new = params.max_new_tokens
        if params.min_new_tokens > max_new:
            name = names.get("min_new_tokens", "min_new_tokens")
            raise invalid(f"'{name}' ({params.min_new_tokens}) exceeds the completion budget ({max_new})", name)
        return max_new

    def check_cost(self, prompt_lens: Sequence[int], budgets: Sequence[int], params: SamplingParams,
                   names: Mapping[str, str]) -> None:
        """Admission by cost, before any work: the request's worst case (every prompt, plus n
        completions of their whole budget each) must fit the KV pool, and the logprob entries
        it asks for the per-request budget. Beyond either it is a 400 naming the field to
        reduce, not an out-of-memory or a pool that keeps retracting."""
        n = params.n
        n_name = names.get("n", "n")
        tokens_name = names.get("max_new_tokens", "max_new_tokens")
        # the field to reduce: n when several are asked for, else max_tokens (or the prompt, when
        # max_tokens is the default)
        field = (n_name if n > 1 else tokens_name if params.max_new_tokens is not None
                 else names.get("prompt", "prompt"))
        pool = self.kv_pool_tokens
        worst = sum(prompt_lens) + n * sum(budgets)
        if pool and worst > pool:
            raise RequestError(
                ErrorKind.CONTEXT_LENGTH_EXCEEDED,
                f"this request may need {worst} tokens of KV cache ({sum(prompt_lens)} prompt tokens + "
                f"{n_name}={n} x {sum(budgets)} completion tokens), more than the server's KV pool holds "
                f"({pool} tokens); reduce '{field}'", field)
        top = params.top_logprobs
        if self.max_logprobs and (params.logprobs or top):
            entries = n * sum(budgets) * (1 + top)
            if entries > self.max_logprobs:
                top_name = names.get("top_logprobs", "top_logprobs")
                field = top_name if top else field
                raise invalid(
                    f"this request may return {entries} logprob entries ({n_name}={n} x {sum(budgets)} completion "
                    f"tokens x (1 + {top_name}={top})), more than one request may ask for ({self.max_logprobs}, "
                    f"MAX_REQUEST_LOGPROBS); reduce '{field}'", field)
