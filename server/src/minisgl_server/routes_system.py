"""GET /health, GET /v1/models, GET /metrics."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get

from minisgl.frontend.errors import ErrorKind, RequestError, invalid

from .metrics import collect_metrics, prometheus_text
from .openai_types import ModelCard, ModelList

# Litestar adds "; charset=utf-8" to every text/ type: naming it here too sent it twice
PROMETHEUS_TYPE = "text/plain; version=0.0.4"


@get("/health", summary="200 once the model is loaded and warmed; 503 while loading or after an engine died")
async def health(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    healthy, body = request.app.state.server.health()
    return Response(body, status_code=200 if healthy else 503)


def _card(served: Any) -> ModelCard:
    info = served.info
    return ModelCard(id=served.model_id, root=info.model_path if info else served.settings.model_path,
                     max_model_len=served.max_context_len if info else 0)


@get("/v1/models", summary="the served models (MODEL_NAME, and VLM_MODEL_NAME when it is another)")
async def list_models(request: Request[Any, Any, Any]) -> ModelList:
    return ModelList(data=[_card(m) for m in request.app.state.server.models])


@get("/v1/models/{model_id:path}", summary="one model")
async def get_model(request: Request[Any, Any, Any], model_id: str) -> ModelCard:
    name = model_id.lstrip("/")
    for served in request.app.state.server.models:
        if served.accepts(name) or served.accepts("/" + name):
            return _card(served)
    raise RequestError(ErrorKind.MODEL_NOT_FOUND, f"the model `{name}` does not exist", "model")


def _wants_prometheus(request: Request[Any, Any, Any]) -> bool:
    fmt = request.query_params.get("format")
    if fmt:
        if fmt not in ("json", "prometheus"):
            raise invalid(f"format must be 'json' or 'prometheus', got {fmt!r}", "format")
        return fmt == "prometheus"
    accept = request.headers.get("accept", "")
    return "text/plain" in accept and "application/json" not in accept


@get("/metrics", summary="engine and server metrics: JSON, or Prometheus text (Accept: text/plain or ?format=prometheus)")
async def metrics(request: Request[Any, Any, Any]) -> Response[Any]:
    data = await collect_metrics(request.app.state.server)
    if _wants_prometheus(request):
        return Response(prometheus_text(data, request.app.state.server.stats), media_type=PROMETHEUS_TYPE)
    return Response(data)
