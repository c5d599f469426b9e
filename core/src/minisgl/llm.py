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
from dataclasses import dataclass
from typing import Any

from .engine.engine import Engine
from .engine.messages import ImageInput
from .frontend.errors import invalid
from .frontend.generation import Frontend, Generation, selected_plugins
from .frontend.images import ImageRules
from .frontend.tokenizer import ChatPrompt, Tokenizer, encode_chat, encode_prompts, prompt_items
from .frontend.tool_calls import ToolCall, ToolUse
from .sampling_params import SamplingParams
from .settings import Settings, settings_from_kwargs

Prompt = str | Sequence[int]


@dataclass
class CompletionOutput:
    index: int  # which of the n samples of its prompt
    text: str
    token_ids: list[int]
    finish_reason: str | None
    logprobs: list[float] | None = None  # of each generated token, under the raw model distribution
    top_logprobs: list[list[tuple[int, float]]] | None = None
    reasoning: str | None = None  # a chat answer's thinking, under --reasoning-parser (then not in text)
    tool_calls: list[ToolCall] | None = None  # a chat answer's calls, when it was given tools


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the prefix cache

    # the first (usually only) sample, for the common n == 1 case
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
    index: int  # sample of that prompt (n > 1)
    text: str
    token_ids: list[int]
    finished: bool = False
    finish_reason: str | None = None
    logprobs: list[float] | None = None


class LLM:
    def __init__(self, model: str | None = None, backend: str = "auto", dtype: str = "auto", **settings: Any) -> None:
        # model None: MODEL_NAME, else the default (the embedded model where that is unavailable offline)
        self.settings: Settings = settings_from_kwargs(model=model, backend=backend, dtype=dtype, **settings)
        plugins = selected_plugins(self.settings)
        self.engine = Engine(self.settings)
        tokenizer = Tokenizer(str(self.engine.model.path), self.settings.trust_remote_code, self.settings.token_cache_size)
        # the engine's vocabulary size: both check and mask grammars with one tokenizer view
        self.frontend = Frontend(tokenizer, max_context_len=self.engine.max_context_len,
                                 eos_token_ids=self.engine.eos_token_ids, vocab_size=self.engine.runner.vocab_size,
                                 max_new_tokens_default=self.settings.max_new_tokens_default,
                                 kv_pool_tokens=self.engine.pool_tokens,
                                 max_logprobs=self.settings.max_request_logprobs,
                                 embedding_size=self.engine.runner.embedding_size, **plugins)
        self._ids = itertools.count()
        self.image_rules = ImageRules.from_settings(self.settings)

    @property
    def tokenizer(self) -> Any:
        """The model's transformers tokenizer."""
        return self.frontend.tokenizer.tokenizer

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None  # type: ignore[assignment]

    # ---- inputs -------------------------------------------------------------------
    def _encode_chat(self, messages: list[dict[str, Any]], template_kwargs: dict[str, Any],
                     tools: ToolUse | None = None) -> ChatPrompt:
        return encode_chat(self.frontend.tokenizer, messages, template_kwargs=template_kwargs,
                           max_context_len=self.frontend.max_context_len,
                           image_rules=self.image_rules, tools=tools and tools.tools,
                           tools_writer=tools and tools.writer)

    def encode_chat(self, messages: list[dict[str, Any]], **template_kwargs: Any) -> list[int]:
        """A conversation as prompt token ids, through the model's chat template (text only:
        a conversation with images goes to `chat`, which carries the images with the ids)."""
        prompt = self._encode_chat(messages, template_kwargs)
        if prompt.images:
            raise invalid("a conversation with images has more than token ids: use LLM.chat", "messages")
        return prompt.ids

    def _encode(self, prompts: Prompt | Sequence[Prompt]) -> list[list[int]]:
        return encode_prompts(self.frontend.tokenizer, prompts, "prompts", self.frontend.max_context_len)

    def _submit(self, ids: list[list[int]], sampling_params: Any, images: list[ImageInput] | None = None,
                chat: bool = False, tools: ToolUse | None = None) -> list[Generation]:
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            params = [sampling_params or SamplingParams()] * len(ids)
        else:
            params = list(sampling_params)
            if len(params) != len(ids):
                raise ValueError(f"sampling_params has {len(params)} entries for {len(ids)} prompts; "
                                 "give one, or one per prompt")
        # each prompt is its own request (its own parameters); the engine batches them all
        gens = [self.frontend.generation(f"llm-{next(self._ids)}", [p], sp, images=[images] if images else None,
                                         separate_reasoning=chat, tools=tools)
                for p, sp in zip(ids, params)]
        for gen in gens:
            for er in gen.engine_requests():
                self.engine.add_request(er)
        return gens

    def _run(self, gens: list[Generation]) -> Iterator[StreamDelta]:
        owner = {s.rid: (i, gen) for i, gen in enumerate(gens) for s in gen.samples}
        try:
            while any(not g.finished for g in gens):
                if not self.engine.has_work():
                    raise RuntimeError("engine went idle with requests unfinished")
                for out in self.engine.step():
                    if out.rid not in owner:
                        continue
                    prompt_index, gen = owner[out.rid]
                    delta = gen.take(out, self.engine.abort_request)
                    if delta is None:
                        continue
                    yield StreamDelta(
                        prompt_index, delta.index, delta.text, delta.token_ids, delta.finish_reason is not None,
                        delta.finish_reason, [lp.logprob for lp in delta.logprobs] if delta.logprobs else None,
                    )
        finally:
            unfinished = [s.rid for g in gens for s in g.unfinished()]
            for rid in unfinished:  # an error or a caller that stopped iterating
                self.engine.abort_request(rid)
            if unfinished and self.engine is not None:
                self.engine.step()  # frees what they held now

    def stream(self, prompts: Prompt | Sequence[Prompt], sampling_params: Any = None) -> Iterator[StreamDelta]:
        """Text deltas as the tokens are produced (all prompts batched together)."""
        yield from self._run(self._submit(self._encode(prompts), sampling_params))

    def generate(self, prompts: Prompt | Sequence[Prompt], sampling_params: Any = None) -> list[RequestOutput]:
        return self._generate(self._submit(self._encode(prompts), sampling_params), prompts)

    def _generate(self, gens: list[Generation], prompts: Prompt | Sequence[Prompt]) -> list[RequestOutput]:
        for _ in self._run(gens):
            pass
        texts = [p if isinstance(p, str) else None for p in prompt_items(prompts)]
        return [self._output(gen, text) for gen, text in zip(gens, texts)]

    def embed(self, prompts: Prompt | Sequence[Prompt], pooling: str = "last", normalize: bool = True) -> list[Any]:
        """Each prompt's embedding as /v1/embeddings computes it: its final hidden states
        pooled ("last" token or "mean"), L2-normalised unless `normalize` is False; float32
        numpy arrays, in order."""
        gen = self.frontend.embedding(f"llm-{next(self._ids)}", self._encode(prompts), pooling,
                                      backend=self.engine.backend_name)
        for er in gen.engine_requests():
            self.engine.add_request(er)
        for _ in self._run([gen]):
            pass
        return gen.embeddings(normalize)

    def chat(self, messages: list[dict[str, Any]] | list[list[dict[str, Any]]],
             sampling_params: SamplingParams | None = None, *, tools: list[dict[str, Any]] | None = None,
             tool_choice: Any = None, parallel_tool_calls: bool = True, **template_kwargs: Any) -> Any:
        """A conversation's answer (the model's chat template, as /v1/chat/completions);
        image_url parts work as there when the model takes images, and `tools` with
        `tool_choice` as there (the calls in `outputs[i].tool_calls`). A list of
        conversations runs as one batch and gives a list of answers."""
        batch = bool(messages) and isinstance(messages[0], list)
        use = self.frontend.tool_use(tools, tool_choice, parallel_tool_calls)
        prompts = [self._encode_chat(m, template_kwargs, use) for m in (messages if batch else [messages])]
        gens = [g for p in prompts for g in self._submit([p.ids], sampling_params, p.images, chat=True, tools=use)]
        outputs = self._generate(gens, [p.ids for p in prompts])
        return outputs if batch else outputs[0]

    @staticmethod
    def _output(gen: Generation, prompt: str | None) -> RequestOutput:
        def logprobs(s: Any) -> tuple[list[float] | None, list[list[tuple[int, float]]] | None]:
            if not s.wants_logprobs:
                return None, None
            tops = [lp.top for lp in s.logprobs] if s.params.top_logprobs else None
            return [lp.logprob for lp in s.logprobs], tops

        outputs = [CompletionOutput(s.index, s.text, s.token_ids, s.finish_reason, *logprobs(s),
                                    reasoning=s.reasoning_content, tool_calls=s.tool_calls if s.tool_parser else None)
                   for s in gen.samples]
        first = gen.samples[0]
        return RequestOutput(request_id=gen.rid, prompt=prompt, prompt_token_ids=first.prompt_ids, outputs=outputs,
                             prompt_tokens=gen.prompt_tokens, cached_tokens=gen.cached_tokens)

    # ---- cache and introspection ----------------------------------------------------
    def warm(self, prompts: Prompt | Sequence[Prompt]) -> int:
        """insert_prefix: put these prompts' KV into the prefix cache; returns tokens inserted."""
        return self.engine.warm(encode_prompts(self.frontend.tokenizer, prompts, param="prompts"))

    def flush_cache(self) -> int:
        return self.engine.flush_cache()

    def metrics(self) -> dict:
        return self.engine.metrics()
