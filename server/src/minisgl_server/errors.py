"""OpenAI's error body, `{"error": {"message", "type", "param", "code"}}`, for every error
the server answers, whatever raised it (our checks, Litestar's validation, routing)."""

from __future__ import annotations

import logging
import re
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from .openai_types import ErrorInfo, ErrorResponse

log = logging.getLogger("minisgl.server")

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_server_error",
    503: "service_unavailable",
}


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or ERROR_TYPES.get(status, "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> ErrorResponse:
        return ErrorResponse(error=ErrorInfo(message=self.message, type=self.type, param=self.param, code=self.code))


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param, code="invalid_value" if param else None)


def _response(err: APIError) -> Response[ErrorResponse]:
    return Response(err.body(), status_code=err.status, headers=err.headers, media_type="application/json")


_MISSING = re.compile(r"missing required field `(\w+)`")
_MSGSPEC_PATH = re.compile(r"`\$\.?([^`]*)`")


def _validation_error(exc: ValidationException) -> APIError:
    """Litestar wraps msgspec's decode error; name the field like OpenAI's `param`."""
    extra = exc.extra if isinstance(exc.extra, list) else []
    message = ""
    param = None
    for item in extra:
        if isinstance(item, dict):
            message = str(item.get("message", ""))
            key = item.get("key")
            param = str(key) if key else None
            break
    message = message or str(exc.detail)
    if "JSON is malformed" in message or "malformed" in message.lower() or "Expected JSON" in message:
        return APIError(400, f"request body is not valid JSON: {message}", code="invalid_json")
    if param == "data":  # Litestar's name for the whole body
        param = None
    missing = _MISSING.search(message)
    if missing:
        path = _MSGSPEC_PATH.search(message)
        param = (path.group(1).split("[")[0].split(".")[0] if path and path.group(1) else None) or missing.group(1)
        return APIError(400, f"missing required field '{missing.group(1)}'", param=param, code="missing_field")
    match = _MSGSPEC_PATH.search(message)
    if match:
        param = param or match.group(1).split("[")[0].split(".")[0] or None
        message = _MSGSPEC_PATH.sub(lambda m: f"`{m.group(1) or 'body'}`", message)
    if param:
        message = f"invalid value for '{param}': {message}"
    return APIError(400, message, param=param, code="invalid_value")


def api_error_handler(request: Request[Any, Any, Any], exc: APIError) -> Response[ErrorResponse]:
    return _response(exc)


def http_exception_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorResponse]:
    if isinstance(exc, ValidationException):
        return _response(_validation_error(exc))
    status = exc.status_code
    if status == 404:
        message = f"no route for {request.method} {request.url.path}"
    elif status == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    if status == 400 and "malformed" in message.lower():
        return _response(APIError(400, f"request body is not valid JSON: {message}", code="invalid_json"))
    headers = dict(exc.headers or {})
    return _response(APIError(status, message, headers=headers))


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorResponse]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _response(APIError(HTTP_500_INTERNAL_SERVER_ERROR, f"internal error: {type(exc).__name__}: {exc}"))


EXCEPTION_HANDLERS = {
    APIError: api_error_handler,
    HTTPException: http_exception_handler,
    Exception: internal_error_handler,
}
