"""Control-plane frames: one msgpack ControlRequest in, one ControlReply out."""

from __future__ import annotations

from typing import Any

import msgspec


class ControlRequest(msgspec.Struct, kw_only=True):
    command: str
    args: dict[str, Any] = {}


class ControlReply(msgspec.Struct, kw_only=True, omit_defaults=True):
    ok: bool
    result: Any = None
    error: str | None = None


def _plain(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


encoder = msgspec.msgpack.Encoder(enc_hook=_plain)
request_decoder = msgspec.msgpack.Decoder(ControlRequest)
reply_decoder = msgspec.msgpack.Decoder(ControlReply)
