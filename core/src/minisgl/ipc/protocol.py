"""Frames on the data plane. Every frame is one msgpack-encoded tagged msgspec Struct.

server -> engine: EngineRequest, AbortRequest (engine/messages.py), EngineCall, Shutdown
engine -> server: EngineReady (once, after load + warm-up), StepOutputs (one per engine
step), EngineReply (answers an EngineCall), EngineFatal (the engine loop is going down),
Heartbeat (the loop is alive: sent whenever nothing else was sent for HEARTBEAT_S)
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..engine.messages import AbortRequest, EngineOutput, EngineRequest


class EngineCall(msgspec.Struct, kw_only=True, tag="call"):
    """A synchronous engine method called from the server (metrics, warm, flush_cache...)."""

    call_id: int
    method: str
    args: dict[str, Any] = {}


class Shutdown(msgspec.Struct, kw_only=True, tag="shutdown"):
    pass


class EngineReady(msgspec.Struct, kw_only=True, tag="ready"):
    replica: int
    pid: int
    model_name: str
    model_path: str
    backend: str
    backend_reason: str
    max_context_len: int
    kv_pool_tokens: int = 0  # tokens its KV pool holds (0: not said)
    eos_token_ids: list[int]
    load_seconds: float
    device: str = ""  # what the engine computes on: "cpu", "cuda:0" (never "auto")
    embedding_size: int = 0  # the width of its embeddings (0: its runner computes none)


class StepOutputs(msgspec.Struct, kw_only=True, tag="outs"):
    outputs: list[EngineOutput]


class EngineReply(msgspec.Struct, kw_only=True, tag="reply"):
    call_id: int
    result: Any = None
    error: str | None = None


class EngineFatal(msgspec.Struct, kw_only=True, tag="fatal"):
    error: str


class Heartbeat(msgspec.Struct, kw_only=True, tag="beat"):
    """Progress for the server's watchdog: any frame from the engine says its loop turns;
    this one says so when the loop has nothing else to send (idle, or steps without output)."""

    steps: int  # engine steps finished so far


ToEngine = EngineRequest | AbortRequest | EngineCall | Shutdown
FromEngine = EngineReady | StepOutputs | EngineReply | EngineFatal | Heartbeat

# Engine methods the server may call through EngineCall (nothing else is reachable).
CALLABLE_METHODS = frozenset({"metrics", "warm", "flush_cache", "flush_tiers", "cache_stats", "prefix_match_len",
                              "check_invariants"})


def _plain(obj: Any) -> Any:
    """Engine call results may hold numpy/torch scalars or paths: send plain values."""
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "__float__"):
        return float(obj)
    return str(obj)


class FrameCodec:
    """One encoder and typed decoders, reused (msgspec's fast path)."""

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder(enc_hook=_plain)
        self._to_engine = msgspec.msgpack.Decoder(ToEngine)
        self._from_engine = msgspec.msgpack.Decoder(FromEngine)

    def encode(self, msg: msgspec.Struct) -> bytes:
        return self._encoder.encode(msg)

    def decode_to_engine(self, frame: bytes) -> ToEngine:
        return self._to_engine.decode(frame)

    def decode_from_engine(self, frame: bytes) -> FromEngine:
        return self._from_engine.decode(frame)
