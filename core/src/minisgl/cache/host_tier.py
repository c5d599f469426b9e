"""The host-memory tier under the prefix cache: KV pages the device pool let go, by key.

A key names one page by everything before it and in it (`tiers.page_keys`), so a page
found here holds exactly the K/V a prefill of that prefix would compute. Bounded by bytes,
least recently used first.
"""

from __future__ import annotations

from collections import OrderedDict

import torch


class HostTier:
    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self.nbytes = 0
        self._pages: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pages)

    def __contains__(self, key: str) -> bool:
        return key in self._pages

    def get(self, key: str) -> torch.Tensor | None:
        page = self._pages.get(key)
        if page is not None:
            self._pages.move_to_end(key)
        return page

    def put(self, key: str, page: torch.Tensor) -> bool:
        """Keep `page` (a host tensor nobody else writes); False when it cannot fit at all."""
        size = page.numel() * page.element_size()
        if key in self._pages or size > self.capacity:
            return key in self._pages
        while self.nbytes + size > self.capacity:
            _, old = self._pages.popitem(last=False)
            self.nbytes -= old.numel() * old.element_size()
        self._pages[key] = page
        self.nbytes += size
        return True

    def clear(self) -> int:
        n = len(self._pages)
        self._pages.clear()
        self.nbytes = 0
        return n

    def check(self) -> None:
        total = sum(p.numel() * p.element_size() for p in self._pages.values())
        if total != self.nbytes or total > self.capacity:
            raise AssertionError(f"host KV tier holds {total} bytes, counts {self.nbytes}, cap {self.capacity}")
