"""HTTP edges of a real server on loopback: JSON bodies only as application/json (415
otherwise, so a cross-origin page cannot POST without a CORS preflight), deadlines for
request headers (raw sockets that never finish them are dropped) and bodies (408, closed), Prometheus' content type,
X-Request-ID on every response, image/video routes that load nothing unconfigured, and
an OpenAPI document whose errors are OpenAI's error body."""

from __future__ import annotations

import selectors
import socket
import time

import httpx
import pytest
from server_process import start_server

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 5.0  # longer than the wait of the body that comes late but in time (below)
JSON_POSTS = ["/generate", "/v1/completions", "/v1/chat/completions", "/v1/images/generations",
              "/v1/videos/generations"]
BODY = b'{"prompt": "hi", "max_new_tokens": 1, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}'


@pytest.fixture(scope="module")
def image_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("image-cache")


@pytest.fixture(scope="module")
def server(tiny_qwen3_path, tmp_path_factory, image_cache):
    srv = start_server(tiny_qwen3_path, log_dir=tmp_path_factory.mktemp("http-edges"),
                       env={"HTTP_HEADER_TIMEOUT": str(HEADER_TIMEOUT), "HTTP_BODY_TIMEOUT": str(BODY_TIMEOUT),
                            "Z_IMAGE_CACHE_DIR": str(image_cache)})
    yield srv
    srv.stop()


def _assert_openai_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    if code is not None:
        assert error["code"] == code, error
    return error


# ---- Content-Type ----------------------------------------------------------------------

@pytest.mark.parametrize("content_type", [None, "text/plain", "text/plain;charset=UTF-8",
                                          "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                          "application/json; charset=latin-1", "application/jsonp", "json"])
@pytest.mark.parametrize("path", JSON_POSTS)
def test_bodies_that_are_not_declared_json_are_415(server, path, content_type):
    headers = {} if content_type is None else {"Content-Type": content_type}
    r = httpx.post(server.url + path, content=BODY, headers=headers, timeout=30)
    error = _assert_openai_error(r, 415, "unsupported_media_type")
    assert error["type"] == "invalid_request_error"
    assert "application/json" in error["message"] or "UTF-8" in error["message"], error


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON;charset=\"UTF-8\"", "application/json;charset=utf8"])
def test_json_with_or_without_a_utf8_charset_is_served(server, content_type):
    r = httpx.post(server.url + "/generate", content=BODY, headers={"Content-Type": content_type}, timeout=60)
    assert r.status_code == 200, r.text


def test_a_cross_origin_simple_request_starts_nothing(server):
    before = httpx.get(server.url + "/metrics", timeout=10).json()
    r = httpx.post(server.url + "/v1/completions", content=b'{"prompt": "hi", "max_tokens": 5}',
                   headers={"Content-Type": "text/plain", "Origin": "https://evil.example"}, timeout=30)
    assert r.status_code == 415
    after = httpx.get(server.url + "/metrics", timeout=10).json()
    assert after["requests_total"] == before["requests_total"]


# ---- header deadline ------------------------------------------------------------------

def _wait_closed(socks: list[socket.socket], timeout: float) -> tuple[int, float]:
    """How many of `socks` the server closed within `timeout`, and when the last one went."""
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    started, closed, last = time.monotonic(), 0, 0.0
    while closed < len(socks) and time.monotonic() - started < timeout:
        for key, _ in sel.select(timeout=0.5):
            try:
                data = key.fileobj.recv(4096)
            except OSError:
                data = b""
            if not data:
                sel.unregister(key.fileobj)
                closed += 1
                last = time.monotonic() - started
    sel.close()
    return closed, last


def test_connections_that_never_finish_their_headers_are_dropped(server):
    socks = []
    try:
        for i in range(1000):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" if i % 3 else b"POST /generate HTTP/1.1\r\nHost")
            s.setblocking(False)
            socks.append(s)
        opened = time.monotonic()
        # the server still serves everyone else meanwhile
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200
        closed, _ = _wait_closed(socks, HEADER_TIMEOUT + 15)
        assert closed == len(socks), f"{len(socks) - closed} of {len(socks)} still open"
        assert time.monotonic() - opened < HEADER_TIMEOUT + 15
    finally:
        for s in socks:
            s.close()


def test_a_client_that_trickles_its_headers_is_dropped_all_the_same(server):
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        started = time.monotonic()
        s.sendall(b"GET /health HTTP/1.1\r\n")
        closed_at = None
        for i in range(int(HEADER_TIMEOUT * 10) + 40):  # a header line every 0.25 s
            try:
                s.sendall(f"X-Slow-{i}: 1\r\n".encode())
            except OSError:
                closed_at = time.monotonic() - started
                break
            s.settimeout(0.25)
            try:
                if s.recv(4096) == b"":
                    closed_at = time.monotonic() - started
                    break
            except TimeoutError:
                pass
        assert closed_at is not None and closed_at < HEADER_TIMEOUT + 3, closed_at
    finally:
        s.close()


def test_idle_and_kept_alive_connections_are_dropped_but_requests_are_not_cut(server):
    # a kept-alive connection that starts a next request and never finishes it
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        s.sendall(b"GET /health HTTP/1.1\r\nHost:")
        s.setblocking(False)
        assert _wait_closed([s], HEADER_TIMEOUT + 10)[0] == 1
    finally:
        s.close()
    # once its headers are in, a request may take its time: its body comes after the deadline
    s = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    try:
        body = b'{"prompt": "hi", "max_new_tokens": 1}'
        s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        time.sleep(HEADER_TIMEOUT + 1)
        s.sendall(body)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        s.close()


def test_a_body_that_never_finishes_gets_408_and_the_connection_closed(server):
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        started = time.monotonic()
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"prompt\": ")
        received = b""
        s.settimeout(0.5)
        while time.monotonic() - started < BODY_TIMEOUT + 20:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                if not received:  # a byte now and then until the answer: trickling does not reset the deadline
                    s.sendall(b" ")
                continue
            except ConnectionResetError:  # closed with our last bytes unread
                break
            if not chunk:
                break
            received += chunk
        closed_after = time.monotonic() - started
        assert received.startswith(b"HTTP/1.1 408"), received[:200]
        assert b"request_timeout" in received and b"HTTP_BODY_TIMEOUT" in received, received
        assert BODY_TIMEOUT - 1 < closed_after < BODY_TIMEOUT + 15, closed_after  # not before its deadline
    finally:
        s.close()
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200


def test_the_header_deadline_defaults_to_a_few_seconds():
    from minisgl.settings import load_settings

    settings, _ = load_settings(environ={})
    assert 0 < settings.http_header_timeout <= 10
    with pytest.raises(Exception, match="http_header_timeout"):  # 0 would close every connection at once
        load_settings(environ={"HTTP_HEADER_TIMEOUT": "0"})


# ---- small headers ----------------------------------------------------------------------

def test_prometheus_content_type_names_its_charset_once(server):
    r = httpx.get(server.url + "/metrics?format=prometheus", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].lower().count("charset") == 1, r.headers["content-type"]
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")


@pytest.mark.parametrize(("method", "path", "kwargs", "status"), [
    ("GET", "/health", {}, 200),
    ("GET", "/no/such/route", {}, 404),
    ("DELETE", "/health", {}, 405),
    ("POST", "/generate", {"content": b"x", "headers": {"Content-Type": "text/plain"}}, 415),
    ("POST", "/generate", {"json": {"prompt": "hi", "max_new_tokens": -1}}, 400),
    ("POST", "/generate", {"json": {"prompt": "hi", "max_new_tokens": 1}}, 200),
])
def test_x_request_id_is_echoed_on_every_response(server, method, path, kwargs, status):
    headers = {**kwargs.pop("headers", {}), "X-Request-ID": "client-id_42.abc"}
    r = httpx.request(method, server.url + path, headers=headers, timeout=30, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["x-request-id"] == "client-id_42.abc"
    # none given: the server makes one, a new one each time
    first = httpx.request(method, server.url + path, headers=headers | {"X-Request-ID": ""}, timeout=30, **kwargs)
    second = httpx.request(method, server.url + path, timeout=30, **{**kwargs, "headers": {
        k: v for k, v in headers.items() if k != "X-Request-ID"}})
    assert first.headers["x-request-id"].startswith("req-") and second.headers["x-request-id"].startswith("req-")
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


def test_x_request_id_on_a_stream(server):
    with httpx.stream("POST", server.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2, "stream": True},
                      headers={"X-Request-ID": "stream-1"}, timeout=60) as r:
        assert r.status_code == 200 and r.headers["x-request-id"] == "stream-1"
        r.read()


@pytest.mark.parametrize("bad", ["x" * 129, "has space", "tab\there", "caf\u00e9"])
def test_an_unacceptable_x_request_id_is_replaced(server, bad):
    r = httpx.get(server.url + "/health", headers={"X-Request-ID": bad.encode("utf-8")}, timeout=10)
    assert r.status_code == 200
    assert r.headers["x-request-id"].startswith("req-") and r.headers["x-request-id"] != bad


# ---- image and video routes load nothing unconfigured ----------------------------------

@pytest.mark.parametrize(("path", "body", "setting"), [
    ("/v1/images/generations", {"prompt": "a red fox", "size": "64x64", "steps": 1}, "IMAGE_MODEL_ID"),
    ("/v1/images/generations", {"prompt": "a red fox", "model": "Tongyi-MAI/Z-Image-Turbo"}, "IMAGE_MODEL_ID"),
    ("/v1/videos/generations", {"prompt": "waves", "num_frames": 2}, "VIDEO_MODEL_ID"),
])
def test_unconfigured_image_and_video_routes_fetch_nothing(server, image_cache, path, body, setting):
    pytest.importorskip("minisgl_diffusion")
    started = time.monotonic()
    r = httpx.post(server.url + path, json=body, timeout=60)
    error = _assert_openai_error(r, 503, "unavailable")
    assert setting in error["message"] and "not configured" in error["message"], error
    assert time.monotonic() - started < 10  # it looked at its settings, it did not load anything
    assert list(image_cache.iterdir()) == []
    assert "downloading" not in server.log()


# ---- the OpenAPI document ---------------------------------------------------------------

def test_openapi_documents_every_error_as_the_openai_error_body(server):
    doc = httpx.get(server.url + "/schema/openapi.json", timeout=10).json()
    schemas = doc["components"]["schemas"]
    assert set(schemas["ErrorResponse"]["properties"]) == {"error"}
    expected = {
        ("post", "/generate"): {"400", "413", "415", "429", "500", "503"},
        ("post", "/v1/completions"): {"400", "404", "413", "415", "429", "500", "503"},
        ("post", "/v1/chat/completions"): {"400", "404", "413", "415", "429", "500", "503"},
        ("get", "/v1/models/{model_id}"): {"400", "404", "500"},
        ("get", "/metrics"): {"400", "500"},
        ("get", "/health"): {"500", "503"},
    }
    for (method, path), statuses in expected.items():
        assert statuses <= set(doc["paths"][path][method]["responses"]), (method, path)
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for status, response in op["responses"].items():
                if status.startswith("2") or (path, status) == ("/health", "503"):
                    continue
                schema = response["content"]["application/json"]["schema"]
                # Anthropic's door answers errors in Anthropic's shape
                shape = "AnthropicError" if path == "/v1/messages" else "ErrorResponse"
                assert schema == {"$ref": f"#/components/schemas/{shape}"}, (method, path, status, schema)
    assert "status_code" not in str(doc)  # Litestar's own error shape is documented nowhere
