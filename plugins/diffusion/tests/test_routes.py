from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from litestar import Litestar
from litestar.testing import TestClient
from PIL import Image

from minisgl.plugins import get_registry
from minisgl_diffusion.routes import images_router
from minisgl_server.errors import EXCEPTION_HANDLERS


@pytest.fixture(scope="module")
def client(settings):
    registry = get_registry()
    assert "diffusers-image" in registry.names("runner")
    app = Litestar(route_handlers=[images_router(settings, registry)], exception_handlers=EXCEPTION_HANDLERS)
    with TestClient(app) as test_client:
        yield test_client


def decode_png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_images_answer_the_openai_shape(client):
    body = {"prompt": "a red fox", "n": 2, "size": "32x24", "seed": 3, "steps": 2}
    response = client.post("/v1/images/generations", json=body)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert isinstance(payload["created"], int)
    assert [d["seed"] for d in payload["data"]] == [3, 4]
    images = [decode_png(d["b64_json"]) for d in payload["data"]]
    assert [im.size for im in images] == [(32, 24), (32, 24)]
    again = client.post("/v1/images/generations", json=body | {"num_inference_steps": 2, "steps": None}).json()
    assert np.array_equal(np.asarray(images[0]), np.asarray(decode_png(again["data"][0]["b64_json"])))


@pytest.mark.parametrize(("body", "param"), [
    ({"size": "32by32"}, "size"),
    ({"size": "30x32"}, "size"),
    ({"n": 0}, "n"),
    ({"n": 11}, "n"),
    ({"prompt": "   "}, "prompt"),
    ({"response_format": "url"}, "response_format"),
    ({"response_format": "jpeg"}, "response_format"),
    ({"steps": 0}, "steps"),
])
def test_images_reject_bad_input_with_400(client, body, param):
    response = client.post("/v1/images/generations", json={"prompt": "a fox", "size": "32x32", "steps": 1} | body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert error["message"]


def test_images_missing_prompt_is_400(client):
    response = client.post("/v1/images/generations", json={"n": 1})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "prompt"


def test_videos_answer_png_frames(client):
    body = {"prompt": "waves", "num_frames": 3, "size": "32x32", "steps": 2, "seed": 1}
    response = client.post("/v1/videos/generations", json=body)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["num_frames"] == 3 and payload["seed"] == 1 and payload["response_format"] == "frames_b64_png"
    frames = [decode_png(f) for f in payload["data"][0]["frames_b64_png"]]
    assert [f.size for f in frames] == [(32, 32)] * 3


def test_videos_answer_an_mp4(client):
    pytest.importorskip("imageio_ffmpeg")
    body = {"prompt": "waves", "num_frames": 3, "size": "32x32", "steps": 1, "seed": 1, "response_format": "b64_mp4"}
    response = client.post("/v1/videos/generations", json=body)
    assert response.status_code == 200, response.text
    mp4 = base64.b64decode(response.json()["data"][0]["b64_mp4"])
    assert mp4[4:8] == b"ftyp"  # an ISO media file


@pytest.mark.parametrize(("body", "param"), [
    ({"response_format": "gif"}, "response_format"),
    ({"num_frames": 0}, "num_frames"),
    ({"size": "big"}, "size"),
    ({"prompt": ""}, "prompt"),
])
def test_videos_reject_bad_input_with_400(client, body, param):
    response = client.post("/v1/videos/generations", json={"prompt": "waves", "size": "32x32", "steps": 1} | body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_no_diffusion_plugin_is_a_503_naming_the_package(settings):
    from minisgl.plugins import Registry

    app = Litestar(route_handlers=[images_router(settings, Registry())], exception_handlers=EXCEPTION_HANDLERS)
    with TestClient(app) as bare:
        response = bare.post("/v1/images/generations", json={"prompt": "a fox"})
    assert response.status_code == 503
    assert "pip install minisgl-diffusion" in response.json()["error"]["message"]


def test_a_model_other_than_the_configured_one_is_404(client):
    body = {"prompt": "a red fox", "size": "32x32", "steps": 2, "model": "/etc"}
    response = client.post("/v1/images/generations", json=body)
    assert response.status_code == 404, response.text
    assert response.json()["error"]["param"] == "model"


def test_the_server_mounts_the_routes_through_the_hook_and_documents_their_errors(monkeypatch):
    from minisgl_server.app import mount_plugin_routes
    from minisgl_server.openapi_docs import document_errors

    monkeypatch.delenv("IMAGE_MODEL_ID", raising=False)  # the routes read the environment's settings
    registry = get_registry()
    assert registry.owner[("route", "images")] == "diffusion"
    app = Litestar(route_handlers=[], exception_handlers=EXCEPTION_HANDLERS)
    mount_plugin_routes(app, registry)
    document_errors(app)
    assert not registry.failed()
    with TestClient(app) as bare:
        doc = bare.get("/schema/openapi.json").json()
        unconfigured = bare.post("/v1/images/generations", json={"prompt": "a fox"})
    for path in ("/v1/images/generations", "/v1/videos/generations"):
        assert set(doc["paths"][path]["post"]["responses"]) == {"200", "400", "404", "408", "413", "415", "500", "503"}
    assert unconfigured.status_code == 503 and unconfigured.json()["error"]["code"] == "unavailable"
