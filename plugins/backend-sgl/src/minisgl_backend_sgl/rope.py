"""Rotary position embedding tables: cos and sin per position, computed once in float32.

The table is [max_positions, head_dim]: the first half of each row holds cos, the second
half sin, for the head_dim/2 frequencies (the "rotate half" layout of Llama and Qwen).
Frequencies follow transformers' definitions, Llama 3's piecewise scaling included.
"""

from __future__ import annotations

import math

import torch

from .config import RopeConfig


def inverse_frequencies(head_dim: int, rope: RopeConfig) -> torch.Tensor:
    """float32 [head_dim // 2]."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim
    inv_freq = 1.0 / (rope.theta**exponents)
    if rope.rope_type == "linear":
        return inv_freq / rope.factor
    if rope.rope_type == "llama3":
        old_len = rope.original_max_position_embeddings
        low_wavelen = old_len / rope.low_freq_factor
        high_wavelen = old_len / rope.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
        smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, smoothed, scaled)
    return inv_freq


def cos_sin_table(head_dim: int, rope: RopeConfig, max_positions: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """float32 [max_positions, head_dim]: cos of each frequency, then sin."""
    inv_freq = inverse_frequencies(head_dim, rope).to(device)
    positions = torch.arange(max_positions, dtype=torch.float32, device=device)
    angles = positions[:, None] * inv_freq[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=-1).contiguous()
