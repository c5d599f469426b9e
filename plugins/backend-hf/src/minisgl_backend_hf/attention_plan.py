"""What every attention layer of one forward needs, computed once per forward, not per layer.

A batch mixes decode rows (one new token) and extend rows (a prefill chunk, maybe after a
cached prefix). Decode rows are attended together as one padded batch over their page-table
rows. A short extend after a cached prefix (a speculative verify step: the last token and
its drafts) becomes one decode row per token, row j attending the prefix and tokens 0..j,
which is causal attention: every token then takes the kernel a decode step takes, so a
verified token gets the logits plain decoding gives it. With the native CPU kernel's vector
path every extend of up to KERNEL_ROWS_UP_TO tokens goes the same way: the kernel, all of a
prompt's rows reading the prompt's one page-table row, beats torch's CPU SDPA there. Each
other extend is attended on its own (it is compute bound, so a Python loop over a handful of
chunks costs nothing next to the matmuls). The index tensors, masks and additive biases
built here are shared by all layers of the model (built on first use, then cached).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from minisgl.engine.batch import ForwardBatch

# Extend chunks are attended in blocks of queries: a block's scores stay small enough for the
# CPU caches, and keys after the block's last query (all masked) are never touched.
QUERY_BLOCK = 128
# extends up to this long after a cached prefix are attended as decode rows (see above)
DECODE_ROWS_UP_TO = 16
# with the native CPU kernel's vector path, extends up to this long (bf16, 9 heads of 64: 0.78
# against SDPA's 1.27 ms for 250 tokens, 3.3 against 4.4 for 512, even at 1k; BENCHMARKS.md)
KERNEL_ROWS_UP_TO = 512


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where attention is allowed, -inf elsewhere, ready to add to the scores."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))


@dataclass
class DecodeGroup:
    """Rows that add one token each: attended in place by the native CPU kernel, or as one
    padded batch gathered from the pool."""

    token_index: torch.Tensor | None  # [Bd] positions in T; None when every row of the batch decodes
    pages: torch.Tensor  # int64 [B, Ld]: the batch's page table (Ld: the longest row's context)
    page_rows: torch.Tensor | None  # int64 [Bd]: the pages row of each decode row; None: row b is row b
    lens: torch.Tensor  # int64 [Bd]: context length of each row, its new token included
    _cache: dict[tuple, torch.Tensor] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return self.lens.shape[0]

    @property
    def width(self) -> int:
        return self.pages.shape[1]

    @property
    def table(self) -> torch.Tensor:
        """int64 [Bd, Ld]: slots of each row's context (pad slots past lens), for the padded gather."""
        if self.page_rows is None:
            return self.pages
        if ("table",) not in self._cache:
            self._cache[("table",)] = self.pages.index_select(0, self.page_rows)
        return self._cache[("table",)]

    @property
    def slots(self) -> torch.Tensor:
        """[Bd * Ld] row-major, for the padded gather (one copy per forward, reused by every layer)."""
        if ("slots",) not in self._cache:
            self._cache[("slots",)] = self.table.reshape(-1)
        return self._cache[("slots",)]

    @property
    def key_valid(self) -> torch.Tensor:
        """bool [Bd, Ld]: key j is inside row b's context."""
        return torch.arange(self.width, device=self.table.device)[None, :] < self.lens[:, None]

    def mask(self, sliding_window: int | None) -> torch.Tensor:
        """bool [Bd, 1, Ld], narrowed to the last `sliding_window` keys where the layer has one."""
        key = ("mask", sliding_window)
        if key not in self._cache:
            allowed = self.key_valid
            if sliding_window is not None:
                key_pos = torch.arange(self.width, device=self.slots.device)
                allowed = allowed & (key_pos[None, :] > self.lens[:, None] - 1 - sliding_window)
            self._cache[key] = allowed[:, None, :]
        return self._cache[key]

    def bias(self, sliding_window: int | None, dtype: torch.dtype) -> torch.Tensor:
        """The same mask as an additive bias [Bd, 1, Ld] in the scores' dtype."""
        key = ("bias", sliding_window, dtype)
        if key not in self._cache:
            self._cache[key] = _additive(self.mask(sliding_window), dtype)
        return self._cache[key]


@dataclass
class ExtendSegment:
    """One request's chunk of new tokens, T[start:end], after `prefix_len` tokens in the pool."""

    start: int
    end: int
    prefix_len: int
    slots: torch.Tensor | None  # [seq_len] slots of prefix + chunk; None when there is no prefix
    _cache: dict[tuple, object] = field(default_factory=dict)

    @property
    def extend_len(self) -> int:
        return self.end - self.start

    @property
    def seq_len(self) -> int:
        return self.prefix_len + self.extend_len

    def _allowed(
        self, q_lo: int, q_hi: int, keys: int, sliding_window: int | None, device: torch.device
    ) -> torch.Tensor:
        q_pos = torch.arange(self.prefix_len + q_lo, self.prefix_len + q_hi, device=device)[:, None]
        k_pos = torch.arange(keys, device=device)[None, :]
        allowed = k_pos <= q_pos
        if sliding_window is not None:
            allowed &= k_pos > q_pos - sliding_window
        return allowed

    def mask(self, sliding_window: int | None, device: torch.device) -> torch.Tensor | None:
        """bool [extend_len, seq_len]; None means plain causal over the chunk alone (SDPA's is_causal)."""
        if sliding_window is None and self.prefix_len == 0:
            return None
        key = ("mask", sliding_window)
        if key not in self._cache:
            self._cache[key] = self._allowed(0, self.extend_len, self.seq_len, sliding_window, device)
        return self._cache[key]  # type: ignore[return-value]

    def blocks(
        self, sliding_window: int | None, dtype: torch.dtype, device: torch.device
    ) -> list[tuple[int, int, int, torch.Tensor]]:
        """Query blocks (lo, hi, visible_keys, additive bias [hi - lo, visible_keys])."""
        key = ("blocks", sliding_window, dtype)
        if key not in self._cache:
            blocks = []
            for lo in range(0, self.extend_len, QUERY_BLOCK):
                hi = min(lo + QUERY_BLOCK, self.extend_len)
                visible = self.prefix_len + hi  # keys after the block's last query are masked for all of it
                bias = _additive(self._allowed(lo, hi, visible, sliding_window, device), dtype)
                blocks.append((lo, hi, visible, bias))
            self._cache[key] = blocks
        return self._cache[key]  # type: ignore[return-value]


@dataclass
class AttentionPlan:
    out_slots: torch.Tensor  # [T]
    num_tokens: int
    decode: DecodeGroup | None
    extends: list[ExtendSegment]

    @classmethod
    def build(cls, batch: ForwardBatch, extends_as_rows: bool = False) -> AttentionPlan:
        """`extends_as_rows`: every extend up to KERNEL_ROWS_UP_TO tokens becomes decode rows."""
        device = batch.page_table.device
        extend_lens, prefix_lens = batch.extend_lens, batch.prefix_lens
        decode_rows: list[int] = []  # the page-table row of each decode row (a short extend: several)
        decode_tokens: list[int] = []
        decode_lens: list[int] = []
        extends: list[ExtendSegment] = []
        start = 0
        for row, (ext, prefix) in enumerate(zip(extend_lens, prefix_lens)):
            if ext == 1 or (ext <= KERNEL_ROWS_UP_TO if extends_as_rows else prefix > 0 and ext <= DECODE_ROWS_UP_TO):
                decode_rows += [row] * ext
                decode_tokens += range(start, start + ext)
                decode_lens += range(prefix + 1, prefix + ext + 1)
            elif ext > 1:
                slots = batch.page_table[row, : prefix + ext] if prefix > 0 else None
                extends.append(ExtendSegment(start, start + ext, prefix, slots))
            start += ext
        if start != batch.num_tokens:
            raise ValueError(f"ForwardBatch: sum(extend_lens)={start} but input_ids has {batch.num_tokens} tokens")

        decode = None
        if decode_rows:
            pages = batch.page_table[:, : max(decode_lens)]
            page_rows = token_index = None
            if decode_rows != list(range(batch.batch_size)):  # not one token of every row
                page_rows = torch.tensor(decode_rows, dtype=torch.long, device=device)
            if len(decode_tokens) != batch.num_tokens:  # not every token
                token_index = torch.tensor(decode_tokens, dtype=torch.long, device=device)
            lens = torch.tensor(decode_lens, dtype=torch.long, device=device)
            decode = DecodeGroup(token_index, pages, page_rows, lens)
        return cls(batch.out_slots, batch.num_tokens, decode, extends)
