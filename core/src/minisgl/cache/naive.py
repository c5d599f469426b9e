"""`--cache-type naive`: no prefix reuse. Every request prefills its whole prompt and its
slots go straight back to the pool when it finishes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import MatchResult


class NaiveCache:
    def __init__(self, page_size: int = 1, settings: Any = None) -> None:
        self.page_size = page_size

    def match_prefix(self, token_ids: Sequence[int]) -> MatchResult:
        return MatchResult(handle=None, slots=[], length=0)

    def match_len(self, token_ids: Sequence[int]) -> int:
        return 0

    def lock(self, handle: Any) -> None:
        pass

    def unlock(self, handle: Any) -> None:
        pass

    def insert(self, token_ids: Sequence[int], slots: Sequence[int], *, prompt_len: int | None = None) -> tuple[int, list[int]]:
        return 0, list(slots)

    def evict(self, num_tokens: int) -> list[int]:
        return []

    def flush(self) -> list[int]:
        return []

    def cached_slots(self) -> list[int]:
        return []

    @property
    def evictable_tokens(self) -> int:
        return 0

    @property
    def locked_tokens(self) -> int:
        return 0

    @property
    def total_tokens(self) -> int:
        return 0

    def stats(self) -> dict[str, int]:
        return {"nodes": 0, "leaves": 0}
