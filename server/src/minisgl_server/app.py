"""The Litestar application: routes (ours and those plugins register), OpenAI-shaped errors,
OpenAPI at /schema, and the lifespan that starts the engines (in the background, so /health
can say 503 meanwhile) and the optional ZeroMQ control plane."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar, Router
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, YamlRenderPlugin

from minisgl import __version__
from minisgl.plugins import Registry

from .errors import EXCEPTION_HANDLERS
from .http_edges import APIKeyMiddleware, JSONContentTypeMiddleware, echo_request_id
from .openapi_docs import document_errors
from .openapi_page import LocalPageRenderPlugin
from .routes_anthropic import messages
from .routes_embeddings import embeddings
from .routes_generate import generate
from .routes_openai import chat_completions, completions
from .routes_responses import RESPONSES_ROUTES
from .routes_system import get_model, health, list_models, metrics
from .routes_tokenize import detokenize, tokenize, version
from .state import ServerState

log = logging.getLogger("minisgl.server")


def create_app(state: ServerState) -> Litestar:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if state.settings.zmq_control:
            from minisgl.control.server import ControlServer

            from .control_context import ServerControlContext

            state.control = ControlServer(state.settings.zmq_control_endpoint, ServerControlContext(state), state.registry)
            await state.control.start()
        starting = asyncio.create_task(state.start(), name="engine-startup")
        try:
            yield
        finally:
            starting.cancel()
            await state.stop()

    app = Litestar(
        route_handlers=[generate, completions, chat_completions, embeddings, *RESPONSES_ROUTES, messages, list_models,
                        get_model, health, metrics, tokenize, detokenize, version],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        lifespan=[lifespan],
        # /schema is a page of our own (no CDN assets); the document at /schema/openapi.json
        openapi_config=OpenAPIConfig(title="minisgl", version=__version__, path="/schema",
                                     render_plugins=[LocalPageRenderPlugin(), JsonRenderPlugin(), YamlRenderPlugin()]),
        request_max_body_size=state.settings.max_body_bytes,
        logging_config=None,  # keep the process's logging setup (minisgl.cli.setup_logging)
        # 401 without a valid key (--api-key); 415 unless a body is application/json
        middleware=[APIKeyMiddleware(state.settings.api_key), JSONContentTypeMiddleware()],
        before_send=[echo_request_id],  # X-Request-ID on every response
    )
    mount_plugin_routes(app, state.registry)
    document_errors(app)  # every route's error statuses, with OpenAI's error body, in /schema
    app.state.server = state
    return app


def mount_plugin_routes(app: Litestar, registry: Registry) -> None:
    """The routes plugins registered (minisgl_register_routes). One that cannot load, or that
    claims a path already served, is reported against its plugin and left out: the server
    starts without it."""
    for spec in registry.specs["route"].values():
        try:
            router = Router(path="/", route_handlers=spec.handlers())
            taken = {route.path for route in app.routes} & {route.path for route in router.routes}
            if taken:
                raise ValueError(f"{', '.join(sorted(taken))} already served")
            app.register(router)
        except Exception as exc:
            registry.fail("route", spec.name, exc)
