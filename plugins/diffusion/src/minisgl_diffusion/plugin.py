from minisgl.hookspecs import hookimpl
from minisgl.specs import RunnerSpec


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
