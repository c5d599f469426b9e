"""The page at /schema: the OpenAPI document rendered on the server as plain HTML.

Litestar's own pages (Redoc, Swagger UI, ...) load their scripts and styles from a CDN and
are blank without a network; this one needs nothing but the server. The document itself
stays at /schema/openapi.json (and /schema/openapi.yaml) for clients and tools.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from litestar.openapi.plugins import OpenAPIRenderPlugin

METHODS = ("get", "post", "put", "patch", "delete")
STYLE = """<style>
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 60em; padding: 0 1em; color: #222 }
code, pre { font: 13px ui-monospace, monospace } pre { background: #f5f5f5; padding: .6em; overflow-x: auto }
.op { border: 1px solid #ddd; border-radius: 4px; margin: .5em 0; padding: .2em .8em }
.m { display: inline-block; min-width: 4.5em; font-weight: bold; text-transform: uppercase }
.get { color: #0a7 } .post { color: #07c } .delete { color: #c33 } .put, .patch { color: #a60 }
summary { cursor: pointer } h2 { margin-top: 1.6em }
</style>"""


def _ref_name(schema: dict[str, Any]) -> str:
    ref = schema.get("$ref", "")
    return ref.rsplit("/", 1)[-1] if ref else schema.get("type", "object")


def _body(op: dict[str, Any]) -> str:
    content = op.get("requestBody", {}).get("content", {})
    parts = [f"<code>{escape(mt)}</code>: <a href='#{escape(_ref_name(c.get('schema', {})))}'>"
             f"{escape(_ref_name(c.get('schema', {})))}</a>" for mt, c in content.items()]
    return f"<p>Body: {', '.join(parts)}</p>" if parts else ""


def _responses(op: dict[str, Any]) -> str:
    rows = "".join(f"<li><code>{escape(str(status))}</code> {escape(r.get('description', ''))}</li>"
                   for status, r in op.get("responses", {}).items())
    return f"<ul>{rows}</ul>" if rows else ""


def render_page(doc: dict[str, Any], json_url: str) -> str:
    info = doc.get("info", {})
    title = escape(f"{info.get('title', 'API')} {info.get('version', '')}".strip())
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>{STYLE}</head><body>",
           f"<h1>{title}</h1><p>The OpenAPI document: <a href='{escape(json_url)}'>{escape(json_url)}</a></p>",
           "<h2>Routes</h2>"]
    for path, item in doc.get("paths", {}).items():
        for method in METHODS:
            if (op := item.get(method)) is None:
                continue
            summary = escape(op.get("summary") or op.get("operationId") or "")
            out.append(f"<details class='op'><summary><span class='m {method}'>{method}</span> "
                       f"<code>{escape(path)}</code> {summary}</summary>"
                       f"<p>{escape(op.get('description') or '')}</p>{_body(op)}{_responses(op)}</details>")
    out.append("<h2>Schemas</h2>")
    for name, schema in doc.get("components", {}).get("schemas", {}).items():
        out.append(f"<details class='op' id='{escape(name)}'><summary><code>{escape(name)}</code></summary>"
                   f"<pre>{escape(json.dumps(schema, indent=2))}</pre></details>")
    out.append("</body></html>")
    return "".join(out)


class LocalPageRenderPlugin(OpenAPIRenderPlugin):
    """/schema itself: the routes and schemas of the document, without any external asset."""

    def __init__(self) -> None:
        super().__init__(path="/", favicon="")  # Litestar's default favicon is a CDN image

    def render(self, request: Any, openapi_schema: dict[str, Any]) -> bytes:
        return render_page(openapi_schema, self.get_openapi_json_route(request)).encode()
