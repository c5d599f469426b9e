"""What every request and response goes through, before any route runs:

- JSON bodies only as `Content-Type: application/json` (charset utf-8 allowed): a route
  that reads a body refuses anything else with 415 and the OpenAI error body. A browser
  page on another origin can POST text/plain (or no type at all) without a CORS preflight;
  it cannot send application/json without one, so it cannot start generations here.
- X-Request-ID: a client's id is echoed on every response (errors, 404s and streams too)
  when it is printable ASCII of at most 128 characters; otherwise, or when absent, the
  server makes one up (`req-<32 hex>`) and sends that.
- --api-key: every route but /health, /metrics and the /schema documents needs
  `Authorization: Bearer <key>` with one of the keys (401 otherwise); `api_key_owner` is
  who a request acts as (what stored responses belong to).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from typing import Any

from litestar.datastructures import MutableScopeHeaders
from litestar.exceptions import HTTPException
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")  # printable ASCII, no spaces, bounded
BODY_METHODS = ("POST", "PUT", "PATCH")
OPEN_PATHS = ("/health", "/metrics", "/schema")  # served without an API key (probes, scrapers, docs)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


def request_id(scope: Scope) -> str:
    """This request's id: the client's X-Request-ID when it is acceptable, else a new one
    (made once per request and kept in the scope)."""
    state = scope.setdefault("state", {})
    rid = state.get("request_id")
    if rid is None:
        given = _header(scope, b"x-request-id")
        text = given.decode("latin-1") if given is not None else ""
        rid = text if REQUEST_ID.match(text) else f"req-{uuid.uuid4().hex}"
        state["request_id"] = rid
    return rid


async def echo_request_id(message: Message, scope: Scope) -> None:
    """A `before_send` hook: every response starts with X-Request-ID."""
    if message["type"] == "http.response.start" and scope.get("type") == "http":
        headers = MutableScopeHeaders.from_message(message)
        if REQUEST_ID_HEADER not in headers:
            headers[REQUEST_ID_HEADER] = request_id(scope)


def json_content_type_problem(content_type: bytes | None) -> str | None:
    """Why a body of this Content-Type is refused, or None when it is JSON in UTF-8."""
    if content_type is None:
        return "a request body needs `Content-Type: application/json` (none was given)"
    text = content_type.decode("latin-1")
    media, *params = [part.strip() for part in text.split(";")]
    if media.lower() != "application/json":
        shown = text if len(text) <= 100 else text[:100] + "..."
        return f"the request body must be `application/json`, not {shown!r}"
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return f"a JSON body must be UTF-8, not charset {value.strip()!r}"
    return None


def _reads_body(scope: Scope) -> bool:
    handler: Any = scope.get("route_handler")
    signature = getattr(handler, "parsed_fn_signature", None)
    return signature is not None and "data" in signature.parameters


class JSONContentTypeMiddleware(ASGIMiddleware):
    """415 for a body route whose request is not `application/json` (before the body is
    read, so nothing of it is parsed)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        if scope["type"] == "http" and scope["method"] in BODY_METHODS and _reads_body(scope):
            problem = json_content_type_problem(_header(scope, b"content-type"))
            if problem is not None:
                raise HTTPException(status_code=415, detail=problem)
        await next_app(scope, receive, send)


def _api_key(scope: Scope) -> str | None:
    """The request's key: OpenAI's `Authorization: Bearer <key>`, or Anthropic's `x-api-key`."""
    value = _header(scope, b"authorization")
    scheme, _, token = (value or b"").decode("latin-1").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    other = (_header(scope, b"x-api-key") or b"").decode("latin-1").strip()
    return other or None


def api_key_owner(scope: Scope, keys: list[str]) -> str:
    """Who a request acts as: a hash of its API key when keys are configured (the middleware
    has checked it), else "" (everyone is one owner)."""
    token = _api_key(scope) if keys else None
    return hashlib.sha256(token.encode()).hexdigest() if token is not None else ""


class APIKeyMiddleware(ASGIMiddleware):
    """401 for a request without one of `keys` (no keys: no check)."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = [k.encode() for k in keys]

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        path = scope.get("path", "")
        if self.keys and scope["type"] == "http" and not any(path == p or path.startswith(p + "/") for p in OPEN_PATHS):
            token = (_api_key(scope) or "").encode()
            if not any(hmac.compare_digest(token, key) for key in self.keys):  # constant time: keys do not leak
                raise HTTPException(status_code=401, detail="a valid API key is needed: `Authorization: Bearer <key>` or `x-api-key: <key>`",
                                    headers={"WWW-Authenticate": "Bearer"})
        await next_app(scope, receive, send)
