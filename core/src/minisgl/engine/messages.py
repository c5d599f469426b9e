"""Messages between a frontend (LLM, server) and an engine. msgspec Structs, so they cross
ZeroMQ as msgpack frames unchanged. The engine deals only in token ids: detokenizing and
stop strings live in the request layer (minisgl.frontend), off the engine's critical path.

Images travel as the processor's tensors (`ImageInput`). In the prompt, an image's
placeholder positions hold its `pad_id`, a number above every vocabulary derived from a
hash of the image's pixels: the prefix cache, keyed by token ids, then tells two images
apart and finds the same image again, with no special case anywhere (sglang does the same).
The runner puts the image's embeddings at those positions."""

from __future__ import annotations

import msgspec
import torch

from ..sampling_params import Pooling, SamplingParams

IMAGE_PAD_BASE = 1 << 40  # every image pad id is IMAGE_PAD_BASE + a 40-bit hash: never a token id

class TensorData(msgspec.Struct, array_like=True):
    name: str
    dtype: str  # a torch dtype name: "float32"
    shape: list[int]
    data: bytes

    @classmethod
    def of(cls, name: str, t: torch.Tensor) -> TensorData:
        t = t.detach().cpu().contiguous()
        return cls(name, str(t.dtype).removeprefix("torch."), list(t.shape), t.view(torch.uint8).numpy().tobytes())

    def tensor(self) -> torch.Tensor:
        raw = torch.frombuffer(bytearray(self.data), dtype=torch.uint8)
        return raw.view(getattr(torch, self.dtype)).reshape(self.shape)


class ImageInput(msgspec.Struct, kw_only=True, array_like=True):
    """One image of a prompt: the processor's tensors for it (pixel_values, and whatever
    else the model's image features take) and where its embeddings go."""

    pad_id: int
    # (start, length) runs of prompt positions holding pad_id; the image's embedding rows fill
    # them in order (one run for LLaVA; several when the processor interleaves tile markers)
    runs: list[tuple[int, int]]
    tensors: list[TensorData]

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.runs)


class EngineRequest(msgspec.Struct, kw_only=True, tag="req"):
    rid: str
    input_ids: list[int]
    sampling: SamplingParams
    priority: int = 0  # for the priority queue policy; higher runs first
    arrival_time: float = 0.0
    images: list[ImageInput] = []
    # "last" | "mean": a prefill-only request whose answer is its prompt's final hidden states
    # pooled (an embedding), not sampled tokens (None: a generation)
    pooling: Pooling | None = None


class AbortRequest(msgspec.Struct, kw_only=True, tag="abort"):
    rid: str
    reason: str = "abort"  # "abort" (client gone) or "stop" (frontend matched a stop string)


class EngineOutput(msgspec.Struct, kw_only=True, tag="out", omit_defaults=True):
    rid: str
    new_token_ids: list[int] = []
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    queue_time_s: float = 0.0  # on a request's first output: seconds it waited to be admitted
    logprobs: list[float] | None = None  # one per new token
    top_logprobs: list[list[tuple[int, float]]] | None = None  # per new token: (id, logprob)
    error: str | None = None  # set with finish_reason "error"
    error_kind: str | None = None  # a minisgl.frontend.errors.ErrorKind value, with error
    embedding: bytes | None = None  # a pooling request's answer: little-endian float32 values
