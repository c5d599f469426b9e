"""The error responses of every route in the OpenAPI document at /schema.

Litestar documents a 400 of its own `{status_code, detail}` shape and nothing else; every
error this server answers is OpenAI's `{"error": {"message", "type", "param", "code"}}`
(errors.py), with the statuses of errors.KINDS. `document_errors(app)` gives each route
the statuses it can answer, each with ErrorResponse as its body (GET /health's 503 is
the health document itself, with `status` and `reason`). A plugin's route declares the
statuses it answers besides a body's in its handler's `opt["error_statuses"]`."""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from litestar.openapi import ResponseSpec
from litestar.routes import HTTPRoute

from .openai_types import ErrorResponse

DESCRIPTIONS = {
    400: "invalid request: a field out of range or of the wrong type, a body that is not JSON, a prompt over the "
         "context (code context_length_exceeded)",
    404: "the model named is not served here (code model_not_found), or a stored response id is not there "
         "(code not_found)",
    408: "the request body did not arrive within HTTP_BODY_TIMEOUT, or the request did not finish within "
         "REQUEST_TIMEOUT (code request_timeout)",
    413: "the request body is too large (code request_too_large)",
    415: "the body is not `Content-Type: application/json` (code unsupported_media_type)",
    429: "too many requests in flight (MAX_INFLIGHT_TOTAL / MAX_INFLIGHT_PER_ENGINE); retry after Retry-After",
    500: "an internal error",
    503: "not ready: loading, draining, restarting, or no engine replica left (codes not_ready, "
         "engine_unavailable, unavailable)",
}
BODY = (400, 408, 413, 415, 500)  # any route that reads a JSON body
GENERATION = (*BODY, 404, 429, 503)

# (method, path) -> the error statuses it can answer
ROUTE_ERRORS: dict[tuple[str, str], tuple[int, ...]] = {
    ("POST", "/generate"): tuple(s for s in GENERATION if s != 404),  # takes no model name
    ("POST", "/v1/completions"): GENERATION,
    ("POST", "/v1/chat/completions"): GENERATION,
    ("POST", "/v1/embeddings"): GENERATION,  # a prefill through the same engines and limits
    ("POST", "/tokenize"): (*BODY, 404, 503),  # no generation: never 429
    ("POST", "/detokenize"): (*BODY, 404, 503),
    ("GET", "/v1/models"): (500,),
    ("GET", "/v1/models/{model_id:path}"): (400, 404, 500),  # 400: Litestar checks the path parameter
    ("GET", "/metrics"): (400, 500),
    ("GET", "/health"): (500, 503),
}
HEALTH_503 = ResponseSpec(
    data_container=dict[str, Any], generate_examples=False,
    description="not serving: the health document, with `status` (loading, draining, restarting, unavailable) "
                "and `reason`",
)


def error_statuses(method: str, path: str, reads_body: bool, declared: tuple[int, ...] = ()) -> tuple[int, ...]:
    """A route's error statuses; one not in the table answers 500, and 400/413/415 if it reads a body,
    and those its handler declares."""
    return ROUTE_ERRORS.get((method, path), (*(BODY if reads_body else (500,)), *declared))


def document_errors(app: Litestar) -> None:
    """Give every HTTP route handler of `app` its error responses (before /schema is built)."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if handler.include_in_schema is False:
                continue
            reads_body = "data" in handler.parsed_fn_signature.parameters
            responses = dict(handler.responses or {})
            declared = tuple(handler.opt.get("error_statuses", ()))
            for method in handler.http_methods:
                for status in error_statuses(method, route.path, reads_body, declared):
                    if status == 503 and route.path == "/health":
                        responses.setdefault(status, HEALTH_503)
                    else:
                        responses.setdefault(status, ResponseSpec(
                            data_container=ErrorResponse, generate_examples=False, description=DESCRIPTIONS[status],
                        ))
            handler.responses = responses
