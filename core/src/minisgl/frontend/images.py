"""`image_url` parts to decoded images, under the limits a server open to the network needs.

Accepted: http(s) URLs (downloaded with a timeout for the whole transfer, the byte cap
enforced while reading, at most MAX_REDIRECTS redirects, and only to http(s)), `data:`
URLs with base64 payloads, and, only with ALLOW_FILE_IMAGE_URL=1, `file://` URLs and local
paths (that lets any caller read the server's files). Decoding is Pillow's, refused above
`max_pixels` before any pixel is decoded (no decompression bombs). Every failure is a
RequestError naming the part, so the client gets a 400 that says which image and why.

These run inside tokenizer jobs (a thread or a `--num-tokenizer` worker), never on the
event loop or in the engine.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from .errors import RequestError, invalid

MAX_REDIRECTS = 5


@dataclass(frozen=True)
class ImageRules:
    timeout_s: float = 5.0  # VLM_IMAGE_HTTP_TIMEOUT_S: the whole download, not each read
    max_bytes: int = 10_485_760  # VLM_MAX_IMAGE_BYTES: the encoded image, however it arrives
    allow_files: bool = False  # ALLOW_FILE_IMAGE_URL
    max_pixels: int = 40_000_000  # width x height, checked from the header before decoding
    max_request_pixels: int = 100_000_000  # VLM_MAX_REQUEST_PIXELS: all of one request's images together
    placeholder: str = "<image>"  # VLM_IMAGE_TOKEN: marks an image where the chat template writes none

    @classmethod
    def from_settings(cls, settings: Any) -> ImageRules:
        return cls(timeout_s=settings.vlm_image_http_timeout_s, max_bytes=settings.vlm_max_image_bytes,
                   allow_files=settings.allow_file_image_url, placeholder=settings.vlm_image_token,
                   max_request_pixels=settings.vlm_max_request_pixels)


def image_bytes(url: str, rules: ImageRules, param: str) -> bytes:
    """The encoded image an `image_url.url` points to."""
    if not isinstance(url, str) or not url:
        raise invalid(f"'{param}.url' must be a non-empty string", param)
    scheme = urlsplit(url).scheme.lower()
    if scheme == "data":
        return _data_url(url, rules, param)
    if scheme in ("http", "https"):
        return _download(url, rules, param)
    if scheme == "file" or scheme == "" or (len(scheme) == 1 and url[1:3] in (":\\", ":/")):
        if not rules.allow_files:
            raise invalid(f"'{param}': file:// URLs and local paths are refused (set ALLOW_FILE_IMAGE_URL=1 to "
                          "allow them; it lets every caller read this server's files)", param)
        return _local_file(unquote(urlsplit(url).path) if scheme == "file" else url, rules, param)
    raise invalid(f"'{param}': URL scheme {scheme!r} is not supported; use http(s) or a data: URL", param)


def _too_big(size: int, rules: ImageRules, param: str) -> Exception:
    return invalid(f"'{param}': the image has {size} bytes or more; the limit is {rules.max_bytes} "
                   "(VLM_MAX_IMAGE_BYTES)", param)


def _data_url(url: str, rules: ImageRules, param: str) -> bytes:
    header, sep, payload = url[5:].partition(",")
    if not sep or not header.endswith(";base64"):
        raise invalid(f"'{param}': a data: URL must look like data:image/png;base64,<data>", param)
    if len(payload) * 3 // 4 > rules.max_bytes + 3:  # known before decoding
        raise _too_big(len(payload) * 3 // 4, rules, param)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"'{param}': the data: URL's payload is not valid base64", param) from None
    if len(data) > rules.max_bytes:
        raise _too_big(len(data), rules, param)
    return data


def _download(url: str, rules: ImageRules, param: str) -> bytes:
    import httpx

    deadline = time.monotonic() + rules.timeout_s
    buf = bytearray()
    try:
        # httpx follows redirects to http(s) only: a redirect to file:// or another scheme fails
        with httpx.Client(timeout=rules.timeout_s, follow_redirects=True, max_redirects=MAX_REDIRECTS) as client, \
                client.stream("GET", url, headers={"Accept": "image/*"}) as resp:
            if resp.status_code >= 400:
                raise invalid(f"'{param}': fetching {url} answered HTTP {resp.status_code}", param)
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > rules.max_bytes:
                raise _too_big(int(declared), rules, param)
            for chunk in resp.iter_bytes():
                buf += chunk
                if len(buf) > rules.max_bytes:
                    raise _too_big(len(buf), rules, param)
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout("the whole download took too long")
    except httpx.TooManyRedirects:
        raise invalid(f"'{param}': fetching {url} took more than {MAX_REDIRECTS} redirects", param) from None
    except httpx.TimeoutException:
        raise invalid(f"'{param}': fetching {url} took longer than {rules.timeout_s:g}s "
                      "(VLM_IMAGE_HTTP_TIMEOUT_S)", param) from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise invalid(f"'{param}': fetching {url} failed: {type(exc).__name__}: {exc}", param) from None
    return bytes(buf)


def _local_file(path: str, rules: ImageRules, param: str) -> bytes:
    try:
        with open(os.path.expanduser(path), "rb") as f:
            data = f.read(rules.max_bytes + 1)
    except OSError as exc:
        raise invalid(f"'{param}': cannot read {path}: {exc.strerror or exc}", param) from None
    if len(data) > rules.max_bytes:
        raise _too_big(len(data), rules, param)
    return data


def check_request_pixels(images: list[tuple[bytes, str]], rules: ImageRules) -> None:
    """One request's images ((encoded bytes, param)) together hold at most
    `max_request_pixels`, read from their headers before any is decoded (each image's own
    cap and the image count bound each factor, not their product)."""
    from PIL import Image

    total = 0
    for data, _param in images:
        try:
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
        except Exception:  # not an image: decode_image says why
            continue
        total += width * height
    if total > rules.max_request_pixels:
        raise invalid(f"the request's images hold {total} pixels together; at most {rules.max_request_pixels} per "
                      "request (VLM_MAX_REQUEST_PIXELS)", "messages")


def decode_image(data: bytes, rules: ImageRules, param: str) -> Any:
    """A PIL RGB image; the pixel cap is checked from the header, before decoding."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > rules.max_pixels:
                raise invalid(f"'{param}': the image is {width}x{height} pixels; at most {rules.max_pixels} "
                              "pixels are decoded", param)
            return img.convert("RGB")  # the first frame of an animation
    except RequestError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        raise invalid(f"'{param}': not an image Pillow can decode ({type(exc).__name__}: {exc})", param) from None
