"""Per-layer cache objects that route mlx-lm's attention onto minisgl's paged KV pool.

mlx-lm attention modules do, for each layer:

    queries = rope(queries, offset=cache.offset); keys = rope(keys, offset=cache.offset)
    keys, values = cache.update_and_fetch(keys, values)
    scaled_dot_product_attention(queries, keys, values, cache=cache, mask=mask, ...)

with the mask made once per call by `cache.make_mask(...)`. Handing the model one
`PagedLayerCache` per layer makes it: rotate each row from its own position (`offset` is
an array, one entry per row), write the new K/V into the pool at the step's slots, and
attend over each row's page-table row gathered from the pool, under a mask that is causal
within the new tokens and hides the gather's padding.
"""

from __future__ import annotations

import mlx.core as mx

from .kv_pool import KVPool
from .step_plan import SubStep


class PagedStep:
    """The mlx arrays of one sub-step, shared by the caches of all layers."""

    def __init__(self, sub: SubStep) -> None:
        rows, width = sub.tokens.shape
        self.offsets = mx.array(sub.offsets)
        self.write_slots = mx.array(sub.write_slots)
        self.context_slots = mx.array(sub.context_slots)
        # absolute position of every query and key; padded queries see finite junk, never NaN
        self._query_pos = self.offsets[:, None] + mx.arange(width, dtype=mx.int32)[None, :]  # [G, L]
        self._key_pos = mx.arange(sub.context_slots.shape[1], dtype=mx.int32)  # [S]
        self._masks: dict[int | None, mx.array] = {}

    def mask(self, window_size: int | None = None) -> mx.array:
        """bool [G, 1, L, S]: key k is visible to query q when k <= q (and q - k < window)."""
        if window_size not in self._masks:
            q = self._query_pos[:, :, None]
            k = self._key_pos[None, None, :]
            visible = k <= q
            if window_size is not None:
                visible = visible & (k > q - window_size)
            self._masks[window_size] = visible[:, None]
        return self._masks[window_size]


class PagedLayerCache:
    """What mlx-lm's attention of layer `layer` sees as its KV cache for one sub-step."""

    def __init__(self, pool: KVPool, layer: int, step: PagedStep) -> None:
        self.pool = pool
        self.layer = layer
        self.step = step

    @property
    def offset(self) -> mx.array:
        return self.step.offsets

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """keys/values [G, kv_heads, L, D] -> the rows' whole context [G, kv_heads, S, D]."""
        rows, heads, width, dim = keys.shape
        flat_k = keys.transpose(0, 2, 1, 3).reshape(rows * width, heads, dim)
        flat_v = values.transpose(0, 2, 1, 3).reshape(rows * width, heads, values.shape[-1])
        self.pool.write(self.layer, self.step.write_slots, flat_k, flat_v)
        k, v = self.pool.gather(self.layer, self.step.context_slots)  # [G, S, kv_heads, D]
        return k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)

    def make_mask(self, N: int, return_array: bool = False, window_size: int | None = None, **_: object) -> mx.array:
        return self.step.mask(window_size)

    def is_trimmable(self) -> bool:
        return False
