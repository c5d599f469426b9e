"""The offline API: `minisgl.LLM`, the same engine as the server, in-process, without HTTP.

    from minisgl import LLM, SamplingParams
    with LLM(model="smollm2-135m") as llm:
        outs = llm.generate(["Hello", "The capital of France is"], SamplingParams(temperature=0))
        print(outs[0].text)
        for delta in llm.stream("Tell me a story", SamplingParams(max_new_tokens=64)):
            print(delta.text, end="", flush=True)

`generate` and `stream` submit every prompt at once and let the scheduler batch them
continuously. Prompts are a str, a list of str, or a list of token-id lists.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .engine.engine import Engine
from .engine.messages import EngineRequest
from .engine.output_processor import SequenceStream, fan_out
from .sampling_params import SamplingParams
from .settings import Settings, settings_from_kwargs

Prompt = str | Sequence[int]


@dataclass
class CompletionOutput:
    index: int  # which of the n sequences of its prompt
    text: str
    token_ids: list[int]
    finish_reason: str | None
    logprobs: list[float] | None = None  # of each generated token, under the raw model distribution
    top_logprobs: list[list[tuple[int, float]]] | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the prefix cache

    # the first (usually only) sequence, for the common n == 1 case
    @property
    def text(self) -> str:
        return self.outputs[0].text

    @property
    def token_ids(self) -> list[int]:
        return self.outputs[0].token_ids

    @property
    def finish_reason(self) -> str | None:
        return self.outputs[0].finish_reason

    @property
    def logprobs(self) -> list[float] | None:
        return self.outputs[0].logprobs

    @property
    def top_logprobs(self) -> list[list[tuple[int, float]]] | None:
        return self.outputs[0].top_logprobs


@dataclass
class StreamDelta:
    prompt_index: int  # position of the prompt in the call
    index: int  # sequence of that prompt (n > 1)
    text: str
    token_ids: list[int]
    finished: bool = False
    finish_reason: str | None = None
    logprobs: list[float] | None = None


@dataclass
class _Seq:
    prompt_index: int
    index: int
    stream: SequenceStream


@dataclass
class _Call:
    prompts: list[str | None]
    prompt_ids: list[list[int]]
    seqs: dict[str, _Seq] = field(default_factory=dict)


class LLM:
    def __init__(self, model: str, backend: str = "auto", dtype: str = "auto", **settings: Any) -> None:
        self.settings: Settings = settings_from_kwargs(model=model, backend=backend, dtype=dtype, **settings)
        self.engine = Engine(self.settings)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.engine.model.path)
        self._ids = itertools.count()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None  # type: ignore[assignment]

    # ---- inputs -------------------------------------------------------------------
    def _normalise(self, prompts: Prompt | Sequence[Prompt]) -> tuple[list[str | None], list[list[int]]]:
        if isinstance(prompts, str):
            prompts = [prompts]
        elif isinstance(prompts, Sequence) and prompts and all(isinstance(t, int) for t in prompts):
            prompts = [prompts]  # one prompt given as token ids
        texts: list[str | None] = []
        ids: list[list[int]] = []
        for i, p in enumerate(prompts):
            if isinstance(p, str):
                texts.append(p)
                ids.append(list(self.tokenizer(p).input_ids))
            elif isinstance(p, Sequence) and all(isinstance(t, int) for t in p):
                texts.append(None)
                ids.append(list(p))
            else:
                raise TypeError(f"prompts[{i}] must be a str or a list of token ids, got {type(p).__name__}")
        return texts, ids

    def _params(self, sampling_params: SamplingParams | Sequence[SamplingParams] | None, n: int) -> list[SamplingParams]:
        if sampling_params is None:
            return [SamplingParams()] * n
        if isinstance(sampling_params, SamplingParams):
            return [sampling_params.validate()] * n
        params = list(sampling_params)
        if len(params) != n:
            raise ValueError(f"sampling_params has {len(params)} entries for {n} prompts; give one, or one per prompt")
        return [p.validate() for p in params]

    # ---- running ------------------------------------------------------------------
    def _submit(self, prompts: Prompt | Sequence[Prompt], sampling_params: Any) -> _Call:
        texts, ids = self._normalise(prompts)
        params = self._params(sampling_params, len(ids))
        call = _Call(texts, ids)
        for i, (prompt_ids, p) in enumerate(zip(ids, params)):
            base = f"llm-{next(self._ids)}"
            for j, (rid, sub) in enumerate(fan_out(base, p)):
                stream = SequenceStream(rid, self.tokenizer, sub, self.engine.eos_token_ids)
                call.seqs[rid] = _Seq(i, j, stream)
                self.engine.add_request(EngineRequest(rid=rid, input_ids=prompt_ids, sampling=sub))
        return call

    def _run(self, call: _Call) -> Iterator[StreamDelta]:
        open_rids = set(call.seqs)
        try:
            while open_rids:
                if not self.engine.has_work():
                    raise RuntimeError(f"engine went idle with {len(open_rids)} requests unfinished")
                for out in self.engine.step():
                    seq = call.seqs.get(out.rid)
                    if seq is None or out.rid not in open_rids:
                        continue
                    delta = seq.stream.update(out)
                    if delta is None:
                        continue
                    if delta.error:
                        raise ValueError(f"prompt {seq.prompt_index}: {delta.error}")
                    if delta.stop_hit:
                        self.engine.abort_request(out.rid, "stop")
                    if delta.finished:
                        open_rids.discard(out.rid)
                    if delta.text or delta.token_ids or delta.finished:
                        yield StreamDelta(
                            seq.prompt_index, seq.index, delta.text, delta.token_ids,
                            delta.finished, delta.finish_reason, delta.logprobs,
                        )
        finally:
            for rid in open_rids:  # an error or a caller that stopped iterating
                self.engine.abort_request(rid)
            if open_rids and self.engine is not None:
                self.engine.step()  # frees what they held now

    def stream(self, prompts: Prompt | Sequence[Prompt], sampling_params: Any = None) -> Iterator[StreamDelta]:
        """Text deltas as the tokens are produced (all prompts batched together)."""
        yield from self._run(self._submit(prompts, sampling_params))

    def generate(self, prompts: Prompt | Sequence[Prompt], sampling_params: Any = None) -> list[RequestOutput]:
        call = self._submit(prompts, sampling_params)
        for _ in self._run(call):
            pass
        results: list[RequestOutput] = []
        for i, (text, ids) in enumerate(zip(call.prompts, call.prompt_ids)):
            seqs = sorted((s for s in call.seqs.values() if s.prompt_index == i), key=lambda s: s.index)
            outputs = [
                CompletionOutput(
                    index=s.index,
                    text=s.stream.text,
                    token_ids=s.stream.token_ids,
                    finish_reason=s.stream.finish_reason,
                    logprobs=s.stream.logprobs if s.stream.params.logprobs or s.stream.params.top_logprobs else None,
                    top_logprobs=s.stream.top_logprobs if s.stream.params.top_logprobs else None,
                )
                for s in seqs
            ]
            first = seqs[0].stream
            results.append(
                RequestOutput(
                    request_id=first.rid.rsplit("-", 1)[0] if len(seqs) > 1 else first.rid,
                    prompt=text,
                    prompt_token_ids=ids,
                    outputs=outputs,
                    prompt_tokens=first.prompt_tokens or len(ids),
                    cached_tokens=first.cached_tokens,
                )
            )
        return results

    # ---- cache and introspection ----------------------------------------------------
    def warm(self, prompts: Prompt | Sequence[Prompt]) -> int:
        """insert_prefix: put these prompts' KV into the prefix cache; returns tokens inserted."""
        _, ids = self._normalise(prompts)
        return self.engine.warm(ids)

    def flush_cache(self) -> int:
        return self.engine.flush_cache()

    def metrics(self) -> dict:
        return self.engine.metrics()
