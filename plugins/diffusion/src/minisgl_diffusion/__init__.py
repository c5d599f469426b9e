"""minisgl diffusion runners: image and video generation with diffusers."""
