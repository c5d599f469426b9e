"""The KV slot pool as indices: free pages of `page_size` consecutive slots.

The backend owns the K/V tensors of `kv_capacity` slots; the core only hands out slot ids.
Slot s lives in page s // page_size, so every allocation is whole aligned pages.
"""

from __future__ import annotations

from collections.abc import Iterable


class OutOfPages(RuntimeError):
    pass


class PagePool:
    def __init__(self, num_slots: int, page_size: int) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.page_size = page_size
        self.num_pages = num_slots // page_size
        if self.num_pages < 1:
            raise ValueError(f"KV pool of {num_slots} slots holds no page of {page_size} slots")
        # pop() from the end hands out low pages first
        self._free: list[int] = list(range(self.num_pages - 1, -1, -1))
        self._is_free = [True] * self.num_pages

    @property
    def num_slots(self) -> int:
        return self.num_pages * self.page_size

    @property
    def free_pages(self) -> int:
        return len(self._free)

    def alloc(self, n: int) -> list[int]:
        if n > len(self._free):
            raise OutOfPages(f"need {n} pages, {len(self._free)} free")
        if n <= 0:
            return []
        pages = self._free[-n:]
        del self._free[-n:]
        pages.reverse()  # the order pop() would give: low pages first
        is_free = self._is_free
        for p in pages:
            is_free[p] = False
        return pages

    def free(self, pages: Iterable[int]) -> None:
        for p in pages:
            if self._is_free[p]:
                raise AssertionError(f"page {p} freed twice")
            self._is_free[p] = True
            self._free.append(p)

    def free_slots(self, slots: list[int]) -> None:
        """Free the pages of page-aligned slot runs (what caches give back)."""
        self.free(self.pages_of(slots))

    def pages_of(self, slots: list[int]) -> list[int]:
        P = self.page_size
        if len(slots) % P:
            raise AssertionError(f"{len(slots)} slots are not whole pages of {P}")
        return [s // P for s in slots[::P]]

    def slots_of(self, pages: Iterable[int]) -> list[int]:
        P = self.page_size
        return [p * P + i for p in pages for i in range(P)]

    def free_page_ids(self) -> list[int]:
        return list(self._free)
