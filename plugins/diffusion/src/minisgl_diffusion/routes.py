"""POST /v1/images/generations and POST /v1/videos/generations, which the server mounts
through `minisgl_register_routes` (plugin.py); only the server imports this module, so
litestar comes with it.

The runners come from the plugin registry (`diffusers-image`, `diffusers-video`), so no
diffusion code loads unless a request needs it. Each runner is built once per router and
keeps one pipeline per model, loaded lazily; generation runs in a worker thread so the event
loop keeps serving other requests. Only a configured model is ever loaded (IMAGE_MODEL_ID,
VIDEO_MODEL_ID): without one, the route answers 503 `unavailable` saying what to set, before
loading anything.

Errors are the core's RequestErrors; the app that mounts the routes turns them into its
error bodies (the server: OpenAI's, with the status of each kind)."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from typing import Any, Literal

import msgspec
from litestar import Request, Router, post

from minisgl.frontend.errors import ErrorKind, RequestError, invalid

from . import encoding

# besides a JSON body's: 404 a model not served here, 503 no runner or no configured model
ERROR_STATUSES = {"error_statuses": (404, 503)}
IMAGE_RUNNER = "diffusers-image"
VIDEO_RUNNER = "diffusers-video"
MAX_IMAGES = 10
MAX_FRAMES = 256
SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


class ImageGenerationRequest(msgspec.Struct, kw_only=True):
    prompt: str
    model: str | None = None
    n: int = 1
    size: str | None = None  # "WxH"; default: the model's own size
    response_format: str = "b64_json"
    seed: int | None = None
    steps: int | None = None
    num_inference_steps: int | None = None  # diffusers' name for steps
    guidance_scale: float | None = None
    negative_prompt: str | None = None
    user: str | None = None


class ImageData(msgspec.Struct, kw_only=True):
    b64_json: str
    seed: int  # regenerates this image alone


class ImageGenerationResponse(msgspec.Struct, kw_only=True):
    created: int
    data: list[ImageData]


class VideoGenerationRequest(msgspec.Struct, kw_only=True):
    prompt: str
    model: str | None = None
    num_frames: int | None = None
    size: str | None = None
    fps: int = 8
    response_format: str = "frames_b64_png"
    seed: int | None = None
    steps: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    negative_prompt: str | None = None


class VideoData(msgspec.Struct, kw_only=True, omit_defaults=True):
    b64_mp4: str | None = None
    frames_b64_png: list[str] | None = None


class VideoGenerationResponse(msgspec.Struct, kw_only=True):
    created: int
    model: str
    num_frames: int
    fps: int
    seed: int
    response_format: Literal["frames_b64_png", "b64_mp4"]
    data: list[VideoData]


# -- request checks (400s) ---------------------------------------------------------------

def parse_size(size: str | None) -> tuple[int | None, int | None]:
    if size is None:
        return None, None
    match = SIZE.match(size)
    if not match:
        raise invalid(f"size must look like 'WIDTHxHEIGHT' (e.g. '1024x1024'), got {size!r}", "size")
    width, height = int(match.group(1)), int(match.group(2))
    for side in (width, height):
        if side < 8 or side > 4096 or side % 8:
            raise invalid(f"size sides must be multiples of 8 between 8 and 4096, got {size!r}", "size")
    return width, height


def _check_prompt(prompt: str) -> None:
    if not prompt.strip():
        raise invalid("prompt must be a non-empty string", "prompt")


def _steps(steps: int | None, num_inference_steps: int | None) -> int | None:
    value = steps if steps is not None else num_inference_steps
    if value is not None and not 1 <= value <= 1000:
        raise invalid(f"steps must be between 1 and 1000, got {value}", "steps")
    return value


def _check_common(seed: int | None, guidance_scale: float | None) -> None:
    if seed is not None and seed < 0:
        raise invalid(f"seed must be >= 0, got {seed}", "seed")
    if guidance_scale is not None and guidance_scale < 0:
        raise invalid(f"guidance_scale must be >= 0, got {guidance_scale}", "guidance_scale")


# -- runners -----------------------------------------------------------------------------

class _Runners:
    """One runner per kind, built on first use from the app's settings and registry."""

    def __init__(self, settings: Any = None, registry: Any = None) -> None:
        self.settings = settings
        self.registry = registry
        self._runners: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _context(self, request: Request[Any, Any, Any]) -> tuple[Any, Any]:
        server = getattr(request.app.state, "server", None)
        settings = self.settings or getattr(server, "settings", None)
        registry = self.registry or getattr(server, "registry", None)
        if settings is None:
            from minisgl.settings import load_settings

            settings, _ = load_settings()
        if registry is None:
            from minisgl.plugins import get_registry

            registry = get_registry()
        return settings, registry

    def get(self, name: str, request: Request[Any, Any, Any]) -> Any:
        with self._lock:
            if name in self._runners:
                return self._runners[name]
        settings, registry = self._context(request)
        try:
            spec = registry.get("runner", name)
        except LookupError:
            raise RequestError(ErrorKind.UNAVAILABLE, f"{'image' if name == IMAGE_RUNNER else 'video'} generation is "
                               "not installed: pip install minisgl-diffusion") from None
        reason = spec.availability(settings)
        if reason:
            raise RequestError(ErrorKind.UNAVAILABLE, f"the {name} runner cannot run here: {reason}")
        try:
            runner = spec.load()(settings)
        except Exception as exc:
            raise _api_error(exc) from exc
        with self._lock:
            return self._runners.setdefault(name, runner)


def _api_error(exc: Exception) -> RequestError:
    """A runner's error as ours: minisgl-diffusion raises RequestErrors; other ValueErrors
    are diffusers' input checks (400); anything else is a bug and propagates (500)."""
    if isinstance(exc, RequestError):
        return exc
    if isinstance(exc, ValueError):
        return invalid(str(exc))
    raise exc


async def _run(fn: Any, **kwargs: Any) -> Any:
    try:
        return await asyncio.to_thread(fn, **kwargs)
    except RequestError:
        raise
    except Exception as exc:
        raise _api_error(exc) from exc


def _require_configured(runner: Any, kind: str) -> None:
    """A server generates images (videos) only with a model it was configured with: with
    none, a request gets UNAVAILABLE saying what to set, and nothing is loaded or fetched
    (the runner's own fallback, Z-Image-Turbo from the hub, is for `minisgl image`)."""
    configured = getattr(runner, "configured_model", None)
    if configured is None:  # a runner without the notion: it decides itself
        return
    if configured() is None:
        hint = runner.configure_hint() if hasattr(runner, "configure_hint") else "configure a model"
        raise RequestError(ErrorKind.UNAVAILABLE, f"{kind} generation is not configured on this server: {hint}")


def _check_model(runner: Any, model: str | None) -> None:
    """Requests may name only the model this server was configured with: letting a client
    pick any local directory or hub id would let it make the server load arbitrary files."""
    if model is None:
        return
    try:
        configured = runner.configured_model() if hasattr(runner, "configured_model") else runner.default_model()
    except Exception:
        configured = None
    if model != configured:
        raise RequestError(ErrorKind.MODEL_NOT_FOUND, f"model {model!r} is not served here (configured: {configured!r})",
                           "model")


def images_router(settings: Any = None, registry: Any = None) -> Router:
    """The two routes. `settings`/`registry` default to the app's ServerState (app.state.server),
    else to the environment and the global plugin registry."""
    runners = _Runners(settings, registry)

    @post("/v1/images/generations", status_code=200, summary="OpenAI-compatible text-to-image (diffusers)",
          opt=ERROR_STATUSES)
    async def create_image(request: Request[Any, Any, Any], data: ImageGenerationRequest) -> ImageGenerationResponse:
        runner = runners.get(IMAGE_RUNNER, request)
        _require_configured(runner, "image")
        _check_prompt(data.prompt)
        if not 1 <= data.n <= MAX_IMAGES:
            raise invalid(f"n must be between 1 and {MAX_IMAGES}, got {data.n}", "n")
        if data.response_format == "url":
            raise invalid("response_format 'url' is not supported: use 'b64_json'", "response_format")
        if data.response_format != "b64_json":
            raise invalid(f"response_format must be 'b64_json', got {data.response_format!r}", "response_format")
        width, height = parse_size(data.size)
        steps = _steps(data.steps, data.num_inference_steps)
        _check_common(data.seed, data.guidance_scale)
        _check_model(runner, data.model)
        result = await _run(
            runner.generate, prompt=data.prompt, n=data.n, width=width, height=height, steps=steps,
            guidance_scale=data.guidance_scale, seed=data.seed, negative_prompt=data.negative_prompt, model=data.model,
        )
        encoded = await asyncio.to_thread(lambda: [encoding.b64_png(image) for image in result.images])
        return ImageGenerationResponse(
            created=int(time.time()),
            data=[ImageData(b64_json=b64, seed=seed) for b64, seed in zip(encoded, result.seeds, strict=True)],
        )

    @post("/v1/videos/generations", status_code=200, summary="text-to-video (diffusers): PNG frames or an MP4",
          opt=ERROR_STATUSES)
    async def create_video(request: Request[Any, Any, Any], data: VideoGenerationRequest) -> VideoGenerationResponse:
        runner = runners.get(VIDEO_RUNNER, request)
        _require_configured(runner, "video")
        _check_prompt(data.prompt)
        if data.response_format not in ("frames_b64_png", "b64_mp4"):
            raise invalid(f"response_format must be 'frames_b64_png' or 'b64_mp4', got {data.response_format!r}",
                          "response_format")
        if data.num_frames is not None and not 1 <= data.num_frames <= MAX_FRAMES:
            raise invalid(f"num_frames must be between 1 and {MAX_FRAMES}, got {data.num_frames}", "num_frames")
        if not 1 <= data.fps <= 120:
            raise invalid(f"fps must be between 1 and 120, got {data.fps}", "fps")
        width, height = parse_size(data.size)
        steps = _steps(data.steps, data.num_inference_steps)
        _check_common(data.seed, data.guidance_scale)
        _check_model(runner, data.model)
        if data.response_format == "b64_mp4":
            try:
                encoding.require_mp4()  # before spending minutes on frames nobody can encode
            except Exception as exc:
                raise _api_error(exc) from exc
        result = await _run(
            runner.generate, prompt=data.prompt, num_frames=data.num_frames, width=width, height=height, steps=steps,
            guidance_scale=data.guidance_scale, seed=data.seed, negative_prompt=data.negative_prompt, model=data.model,
        )
        if data.response_format == "b64_mp4":
            video = VideoData(b64_mp4=await _run(encoding.b64_mp4, frames=result.frames, fps=data.fps))
        else:
            video = VideoData(frames_b64_png=await asyncio.to_thread(lambda: [encoding.b64_png(f) for f in result.frames]))
        return VideoGenerationResponse(
            created=int(time.time()), model=data.model or result.model, num_frames=len(result.frames), fps=data.fps,
            seed=result.seed, response_format=data.response_format, data=[video],  # type: ignore[arg-type]
        )

    return Router(path="/", route_handlers=[create_image, create_video])
