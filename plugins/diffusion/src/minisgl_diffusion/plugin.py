from minisgl.hookspecs import hookimpl
from minisgl.specs import CommandSpec, RouteSpec, RunnerSpec, SettingSpec


@hookimpl
def minisgl_register_runners(register):
    register(RunnerSpec(
        name="diffusers-image",
        description="text-to-image with a diffusers pipeline (Z-Image-Turbo by default)",
        factory="minisgl_diffusion.image:ImageRunner",
        probe="minisgl_diffusion.probe:probe",
        modality="image",
    ))
    register(RunnerSpec(
        name="diffusers-video",
        description="text-to-video with a diffusers pipeline",
        factory="minisgl_diffusion.video:VideoRunner",
        probe="minisgl_diffusion.probe:probe",
        modality="video",
    ))


@hookimpl
def minisgl_register_settings(register):
    for name, type_, default, env, flags, help_ in [
        ("image_model_id", str | None, None, "IMAGE_MODEL_ID", ("--image-model",),
         "image model (hub id or diffusers pipeline dir); default: Z_IMAGE_MODEL_ID"),
        ("video_model_id", str | None, None, "VIDEO_MODEL_ID", ("--video-model",), "video model (hub id or pipeline dir)"),
        ("z_image_model_id", str, "Tongyi-MAI/Z-Image-Turbo", "Z_IMAGE_MODEL_ID", (), "the default image model"),
        ("z_image_model_dir", str | None, None, "Z_IMAGE_MODEL_DIR", (), "local checkpoint dir of the Z-Image model"),
        ("z_image_cache_dir", str, "~/.cache/mini-sglang", "Z_IMAGE_CACHE_DIR", (), "where Z-Image checkpoints are cached"),
    ]:
        register(SettingSpec(name=name, type=type_, default=default, env=(env,), flags=flags, help=help_))


@hookimpl
def minisgl_register_commands(register):
    register(CommandSpec(
        name="image",
        description="generate an image with a diffusion runner",
        factory="minisgl_diffusion.cli:image",
    ))


@hookimpl
def minisgl_register_routes(register):
    register(RouteSpec(
        name="images",
        description="POST /v1/images/generations and /v1/videos/generations",
        factory="minisgl_diffusion.routes:images_router",
    ))
