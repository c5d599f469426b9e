"""OpenAI's error body, `{"error": {"message", "type", "param", "code"}}`, for every error
the server answers, whatever raised it (our checks, Litestar's validation, routing)."""

from __future__ import annotations

import logging
import re
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException

from minisgl.frontend.errors import ErrorKind, RequestError, invalid

from .openai_types import ErrorInfo, ErrorResponse

log = logging.getLogger("minisgl.server")

# One table: each error kind's HTTP status, OpenAI error type and code.
KINDS: dict[ErrorKind, tuple[int, str, str | None]] = {
    ErrorKind.INVALID_REQUEST: (400, "invalid_request_error", None),
    ErrorKind.CONTEXT_LENGTH_EXCEEDED: (400, "invalid_request_error", "context_length_exceeded"),
    ErrorKind.MODEL_NOT_FOUND: (404, "not_found_error", "model_not_found"),
    ErrorKind.NOT_FOUND: (404, "not_found_error", "not_found"),
    ErrorKind.CAPACITY: (429, "rate_limit_error", "rate_limit_exceeded"),
    ErrorKind.NOT_READY: (503, "service_unavailable", "not_ready"),
    ErrorKind.ENGINE_DEAD: (503, "service_unavailable", "engine_unavailable"),
    ErrorKind.TIMEOUT: (408, "invalid_request_error", "request_timeout"),
    ErrorKind.UNAVAILABLE: (503, "service_unavailable", "unavailable"),
    ErrorKind.INTERNAL: (500, "internal_server_error", None),
}
RETRY_AFTER = {ErrorKind.CAPACITY: "1", ErrorKind.NOT_READY: "1"}
# Litestar's own exceptions carry a status: their OpenAI error type
STATUS_TYPES = {404: "not_found_error", 429: "rate_limit_error", 500: "internal_server_error", 503: "service_unavailable"}
# ... and, for some, an OpenAI-style code
STATUS_CODES = {401: "invalid_api_key", 405: "method_not_allowed", 413: "request_too_large", 415: "unsupported_media_type"}
MAX_MESSAGE_CHARS = 2000  # an error never echoes a huge value back


def error_body(exc: BaseException) -> tuple[int, ErrorResponse, dict[str, str]]:
    """Status, OpenAI error body and headers for any exception."""
    if isinstance(exc, RequestError):
        status, type_, code = KINDS[exc.kind]
        message, param = exc.message, exc.param
        headers = {"Retry-After": RETRY_AFTER[exc.kind]} if exc.kind in RETRY_AFTER else {}
    elif isinstance(exc, HTTPException):
        status, param, code = exc.status_code, None, STATUS_CODES.get(exc.status_code)
        type_ = STATUS_TYPES.get(status, "invalid_request_error")
        message, headers = str(exc.detail), dict(exc.headers or {})
    else:
        status, type_, code, param, headers = 500, "internal_server_error", None, None, {}
        message = f"internal error: {type(exc).__name__}: {exc}"
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "... (truncated)"
    return status, ErrorResponse(error=ErrorInfo(message=message, type=type_, param=param, code=code)), headers


def _response(exc: BaseException) -> Response[ErrorResponse]:
    status, body, headers = error_body(exc)
    return Response(body, status_code=status, headers=headers, media_type="application/json")


_MISSING = re.compile(r"missing required field `(\w+)`")
_MSGSPEC_PATH = re.compile(r"`\$\.?([^`]*)`")  # msgspec names a field by its path: `$.messages[0].role`


def _validation_error(exc: ValidationException) -> RequestError:
    """A body that decoded but does not fit its schema: name the top-level field at fault,
    as OpenAI's `param` does (Litestar says "data" for the whole body)."""
    item = next((i for i in exc.extra if isinstance(i, dict)), {}) if isinstance(exc.extra, list) else {}
    message = str(item.get("message") or exc.detail)
    param = item.get("key") if item.get("key") != "data" else None
    param = param and param.split("[")[0].split(".")[0]  # `metadata[...]`: the top-level field
    path = _MSGSPEC_PATH.search(message)
    field = path.group(1).split("[")[0].split(".")[0] if path else ""
    missing = _MISSING.search(message)
    if missing:
        return invalid(f"missing required field '{missing.group(1)}'", field or missing.group(1))
    param = param or field or None
    message = _MSGSPEC_PATH.sub(lambda m: f"`{m.group(1) or 'body'}`", message)
    return invalid(f"invalid value for '{param}': {message}" if param else message, param)


def request_error_handler(request: Request[Any, Any, Any], exc: RequestError) -> Response[ErrorResponse]:
    if exc.kind is ErrorKind.INTERNAL:
        log.error("internal error on %s %s: %s", request.method, request.url.path, exc.message)
    return _response(exc)


def http_exception_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorResponse]:
    if isinstance(exc, ValidationException):
        return _response(_validation_error(exc))
    status = exc.status_code
    if status == 404:
        exc = HTTPException(status_code=404, detail=f"no route for {request.method} {request.url.path}",
                            headers=exc.headers)
    elif status == 405:
        exc = HTTPException(status_code=405, detail=f"method {request.method} is not allowed on {request.url.path}",
                            headers=exc.headers)
    elif isinstance(exc.__cause__, SerializationException):  # the body is not JSON at all
        return _response(invalid(f"request body is not valid JSON: {exc.detail}"))
    return _response(exc)


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorResponse]:
    if isinstance(exc, RecursionError):  # a body nested deeper than any decoder goes
        return _response(invalid("request body is nested too deeply"))
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _response(exc)


EXCEPTION_HANDLERS = {
    RequestError: request_error_handler,
    HTTPException: http_exception_handler,
    Exception: internal_error_handler,
}
