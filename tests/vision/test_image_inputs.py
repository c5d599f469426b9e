"""The request layer's image rules: where an image may come from, how big it may be, and
that each refusal is a 400-kind error naming the part (real HTTP over loopback)."""

from __future__ import annotations

import io
import time

import pytest
from image_server import ImageServer, data_url, png_bytes

from minisgl.frontend.errors import ErrorKind, RequestError
from minisgl.frontend.images import ImageRules, check_request_pixels, decode_image, image_bytes

P = "messages[0].content[1].image_url"


def refused(url: str, rules: ImageRules, *words: str) -> RequestError:
    with pytest.raises(RequestError) as err:
        image_bytes(url, rules, P)
    assert err.value.kind is ErrorKind.INVALID_REQUEST
    assert P in err.value.message
    for word in words:
        assert word in err.value.message, err.value.message
    return err.value


@pytest.fixture(scope="module")
def server():
    with ImageServer(huge_bytes=2 << 20) as s:
        yield s


def test_data_urls_decode_and_bad_ones_are_refused():
    png = png_bytes(3)
    assert image_bytes(data_url(png), ImageRules(), P) == png
    assert decode_image(png, ImageRules(), P).size == (50, 40)
    refused("data:image/png,rawbytes", ImageRules(), "base64")
    refused("data:image/png;base64,@@@not-base64@@@", ImageRules(), "not valid base64")
    refused(data_url(png), ImageRules(max_bytes=100), "VLM_MAX_IMAGE_BYTES", "100")


def test_http_images_download_and_failures_say_why(server):
    assert image_bytes(f"{server.url}/img/5.png", ImageRules(), P) == png_bytes(5)
    refused(f"{server.url}/missing", ImageRules(), "HTTP 404")
    refused(f"{server.url}/loop", ImageRules(), "redirects")
    refused(f"{server.url}/to-file", ImageRules(), "failed")  # a redirect never leaves http(s)
    refused("ftp://example.com/a.png", ImageRules(), "'ftp' is not supported")
    refused("http://127.0.0.1:1/none.png", ImageRules(timeout_s=2), "failed")


def test_the_byte_cap_holds_while_reading_and_the_timeout_covers_the_whole_download(server):
    # /huge sends no Content-Length: the download must stop at the cap, not after the body
    refused(f"{server.url}/huge", ImageRules(max_bytes=1 << 20), "VLM_MAX_IMAGE_BYTES")
    started = time.monotonic()
    refused(f"{server.url}/slow", ImageRules(timeout_s=1.0), "VLM_IMAGE_HTTP_TIMEOUT_S")
    assert time.monotonic() - started < 5  # each byte arrives in time, the whole body does not


def test_files_only_with_allow_file_image_url(tmp_path):
    path = tmp_path / "cat.png"
    path.write_bytes(png_bytes(1))
    for url in (f"file://{path}", str(path)):
        refused(url, ImageRules(), "ALLOW_FILE_IMAGE_URL=1")
        assert image_bytes(url, ImageRules(allow_files=True), P) == png_bytes(1)
    refused(f"file://{tmp_path}/missing.png", ImageRules(allow_files=True), "cannot read")
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * 5000)
    refused(str(big), ImageRules(allow_files=True, max_bytes=4096), "VLM_MAX_IMAGE_BYTES")


def test_a_request_s_images_together_have_a_pixel_budget():
    images = [(png_bytes(i), f"messages[0].content[{i}]") for i in range(3)]  # 50 x 40 each
    check_request_pixels(images, ImageRules(max_request_pixels=6000))
    with pytest.raises(RequestError, match="6000 pixels together; at most 5999") as caught:
        check_request_pixels(images, ImageRules(max_request_pixels=5999))
    assert caught.value.param == "messages" and "VLM_MAX_REQUEST_PIXELS" in caught.value.message


def test_decoding_refuses_non_images_and_pixel_bombs():
    from PIL import Image

    with pytest.raises(RequestError, match="not an image Pillow can decode"):
        decode_image(b"GIF89a but not really", ImageRules(), P)
    # a tiny file whose header claims 12000 x 12000 pixels: refused before decoding
    buf = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buf, format="PNG")
    assert len(buf.getvalue()) < 200_000
    with pytest.raises(RequestError, match="12000x12000 pixels"):
        decode_image(buf.getvalue(), ImageRules(max_pixels=10_000_000), P)
