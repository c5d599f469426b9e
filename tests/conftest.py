"""Shared fixtures for every test under tests/. Each group of fixtures lives in its own
module next to this file; import it here so pytest sees its fixtures everywhere."""

from model_fixtures import (  # noqa: F401
    smollm2_path,
    tiny_idefics3_path,
    tiny_llama_path,
    tiny_llava_path,
    tiny_qwen3_path,
)
