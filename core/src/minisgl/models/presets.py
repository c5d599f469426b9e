"""Built-in architecture presets: real models' shapes, random weights, offline tokenizer.

Each `presets/<name>.json` holds the real model's `config.json` (vocab, layers, heads, KV
heads, head_dim, intermediate size, rope, max positions, tied embeddings) and where its
special tokens sit. Preparing one writes that config plus a byte-level tokenizer exactly
as large as the vocabulary; there are no weights: backends initialise them randomly
(`--dummy-weight`), which is what speed work on a GPU needs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from .tokenizer_builder import build_byte_level_tokenizer, save_hf_tokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    config: dict[str, Any]
    special_tokens: dict[str, int]
    bos_token: str | None
    eos_token: str
    pad_token: str | None


@cache
def load_presets() -> dict[str, Preset]:
    """All presets shipped in the package, by name (the file name without .json)."""
    presets: dict[str, Preset] = {}
    for entry in resources.files(__package__).joinpath("presets").iterdir():
        if not entry.name.endswith(".json"):
            continue
        name = entry.name.removesuffix(".json")
        data = json.loads(entry.read_text(encoding="utf-8"))
        tok = data["tokenizer"]
        presets[name] = Preset(
            name=name,
            description=data["description"],
            config=data["config"],
            special_tokens=dict(tok["special_tokens"]),
            bos_token=tok.get("bos_token"),
            eos_token=tok["eos_token"],
            pad_token=tok.get("pad_token"),
        )
    return dict(sorted(presets.items()))


def write_preset(preset: Preset, out_dir: Path) -> None:
    """Write config.json, generation_config.json and the tokenizer into `out_dir`."""
    logger.info("building preset %s: config + %d-token byte-level tokenizer", preset.name, preset.config["vocab_size"])
    (out_dir / "config.json").write_text(json.dumps(preset.config, indent=2) + "\n", encoding="utf-8")
    generation = {key: preset.config[key] for key in ("bos_token_id", "eos_token_id") if key in preset.config}
    generation["pad_token_id"] = preset.special_tokens.get(preset.pad_token) if preset.pad_token else None
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
    tokenizer = build_byte_level_tokenizer(preset.config["vocab_size"], preset.special_tokens)
    save_hf_tokenizer(
        tokenizer, out_dir, bos_token=preset.bos_token, eos_token=preset.eos_token, pad_token=preset.pad_token
    )
