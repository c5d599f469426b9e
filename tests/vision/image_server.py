"""A local HTTP server for image URLs in tests: real sockets, with the misbehaviours a public
server meets (errors, redirect loops, redirects to other schemes, slow and oversized bodies)."""

from __future__ import annotations

import base64
import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np


def png_bytes(seed: int = 0, size: tuple[int, int] = (50, 40)) -> bytes:
    from PIL import Image

    width, height = size
    pixels = (np.random.RandomState(seed).rand(height, width, 3) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


class ImageServer:
    """GET /img/<seed>.png: an image; /missing: 404; /loop: endless redirects; /to-file:
    a redirect to file:///etc/passwd; /slow: a body that trickles; /huge: a body of
    `huge_bytes` with no Content-Length."""

    def __init__(self, huge_bytes: int = 4 << 20) -> None:
        owner = self
        self.huge_bytes = huge_bytes
        self.requests: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                owner.requests.append(self.path)
                if self.path.startswith("/img/"):
                    body = png_bytes(int(self.path[5:].split(".")[0]))
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif self.path == "/loop":
                    self.send_response(302)
                    self.send_header("Location", "/loop")
                    self.end_headers()
                elif self.path == "/to-file":
                    self.send_response(302)
                    self.send_header("Location", "file:///etc/passwd")
                    self.end_headers()
                elif self.path == "/slow":
                    self.send_response(200)
                    self.end_headers()
                    try:
                        for _ in range(100):
                            self.wfile.write(b"x")
                            self.wfile.flush()
                            time.sleep(0.1)
                    except OSError:
                        pass
                elif self.path == "/huge":
                    self.send_response(200)
                    self.end_headers()  # no Content-Length: the cap must hold while reading
                    try:
                        for _ in range(owner.huge_bytes // 65536 + 1):
                            self.wfile.write(b"\0" * 65536)
                    except OSError:
                        pass
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ImageServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
