"""Hierarchical prefix cache (`--enable-hierarchical-cache`): the tiers under the device pool.

The radix cache holds prefixes in the device's KV pool. With the tiers on, a page the pool
lets go (evicted under pressure, or, with --hicache-write-policy write_through, every page
a finished request inserts) is copied to host memory and, with
--hicache-storage-backend file, to disk. A request whose cached prefix stops short looks
for its following pages in the tiers (host first) and has them written back into fresh
pool pages before its prefill: they count as cached tokens.

Pages are keyed by a hash chain over the token ids: a page's key covers every token before
it and its own, so equal keys mean equal K/V. The runner gathers and scatters the bytes
(`read_kv`, `write_kv`: tensors with the token dimension first); `HostCopier` moves them
to and from the host (pinned and asynchronous on CUDA). Pages whose copy is in flight wait
in `_landing` and join the tiers once it has landed: the step that let them go never waits.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from .disk_tier import DiskTier
from .host_copy import HostCopier, Landing
from .host_tier import HostTier

log = logging.getLogger("minisgl.cache")
GB = 10**9

# what `flush_cache` may drop (`minisgl control flush_cache --tier ...`); omitted: device and host
FlushTier = Literal["device", "host", "disk", "all"]
FLUSH_TIERS: tuple[str, ...] = get_args(FlushTier)

# what the engine's metrics carry while the tiers are on (the server's /metrics help texts)
METRICS = {
    "hicache_host_pages": "KV pages held by the hierarchical cache's host tier.",
    "hicache_host_bytes": "Bytes held by the host tier.",
    "hicache_disk_pages": "KV page files in the storage directory (every model's).",
    "hicache_disk_bytes": "Bytes of KV page files in the storage directory.",
    "hicache_disk_rejected_total": "Page files found truncated, corrupt or another model's (removed, recomputed).",
    "hicache_host_hit_tokens_total": "Prompt tokens loaded back from the host tier.",
    "hicache_disk_hit_tokens_total": "Prompt tokens loaded back from the disk tier.",
    "hicache_loaded_bytes_total": "Bytes copied from the tiers into the device pool.",
    "hicache_host_stored_bytes_total": "Bytes copied into the host tier.",
    "hicache_disk_written_bytes_total": "Bytes written to the disk tier (counted once a file is in place).",
    "hicache_disk_dropped_total": "Pages not written to the disk tier: its write queue was full or the write failed.",
    "hicache_disk_read_bytes_total": "Bytes read from the disk tier.",
    "hicache_capacity_tokens": "Tokens the larger of the host and disk tiers can hold.",
}


def page_keys(token_ids: Sequence[int], page_size: int) -> list[str]:
    """One key per whole page of `token_ids`: a hash of the page's tokens and the key before it."""
    keys, prev = [], b""
    for start in range(0, len(token_ids) // page_size * page_size, page_size):
        h = hashlib.sha256(prev)
        h.update(b",".join(str(t).encode() for t in token_ids[start : start + page_size]))
        prev = h.digest()
        keys.append(h.hexdigest())
    return keys


def model_fingerprint(model_path: str, backend: str, page_size: int, page: torch.Tensor,
                      random_weights: bool = False, tp_size: int = 1) -> str:
    """What a stored page is only valid for: the model (its path, config and weight files),
    the backend's KV layout (shape and dtype of a page), the page size and the TP size (a
    page joins the ranks' slices of the heads: another split is another layout, even where
    the shape is the same). Random weights are this process's own: nothing another process
    wrote matches them."""
    h = hashlib.sha256(f"{model_path}|{backend}|{page_size}|{page.dtype}|{tuple(page.shape)}|tp{tp_size}".encode())
    if random_weights:
        h.update(os.urandom(16))
    root = Path(model_path)
    if root.is_dir():
        config = root / "config.json"
        if config.is_file():
            h.update(config.read_bytes())
        for f in sorted(root.glob("*.safetensors")) + sorted(root.glob("*.bin")):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()


class KVTiers:
    def __init__(self, page_size: int, read_kv: Callable[[list[int]], torch.Tensor],
                 write_kv: Callable[[list[int], torch.Tensor], None], host: HostTier, disk: DiskTier | None,
                 write_through: bool, token_bytes: int = 0, copier: HostCopier | None = None) -> None:
        self.P = page_size
        self.token_bytes = token_bytes  # KV bytes of one token (every layer, K and V)
        self.copier = copier or HostCopier(torch.device("cpu"))
        # pages copied to the host, not landed yet (in copy order: they land in that order)
        self._landing: OrderedDict[str, tuple[torch.Tensor, Landing]] = OrderedDict()
        self.read_kv = read_kv
        self.write_kv = write_kv
        self.host = host
        self.disk = disk
        self.write_through = write_through
        self.counters: Counter[str] = Counter()

    def store(self, token_ids: Sequence[int], tail_slots: Sequence[int]) -> None:
        """Copy the pages at `tail_slots` (the last len(tail_slots) of `token_ids`, whole
        pages) to every tier that lacks them; they join the tiers once on the host."""
        self.settle()
        P = self.P
        keys = page_keys(token_ids, P)
        first = (len(token_ids) - len(tail_slots)) // P
        missing = [i for i in range(len(tail_slots) // P) if keys[first + i] not in self._landing and (
                   keys[first + i] not in self.host or (self.disk is not None and keys[first + i] not in self.disk))]
        if not missing:
            return
        data = self.read_kv([s for i in missing for s in tail_slots[i * P : (i + 1) * P]])
        pages, landing = self.copier.to_host(data, P)
        for i, page in zip(missing, pages, strict=True):
            self._landing[keys[first + i]] = (page, landing)
        self.settle()

    def settle(self, wait: bool = False) -> None:
        """Put the pages whose copies have landed into the tiers (all of them, with `wait`)."""
        c = self.counters
        while self._landing:
            key, (page, landing) = next(iter(self._landing.items()))
            if not landing.done():
                if not wait:
                    return
                landing.wait()
            del self._landing[key]
            if key not in self.host and self.host.put(key, page):
                c["hicache_host_stored_bytes_total"] += page.numel() * page.element_size()
            if self.disk is not None:
                self.disk.put(key, page)  # written on the disk tier's thread

    def load(self, token_ids: Sequence[int], start: int) -> list[torch.Tensor]:
        """The pages that continue a cached prefix of `start` tokens, consecutive, from the
        tiers (host first); counted as hits."""
        P = self.P
        keys = page_keys(token_ids, P)
        self.settle(wait=any(k in self._landing for k in keys[start // P :]))
        pages: list[torch.Tensor] = []
        c = self.counters
        for key in keys[start // P :]:
            page = self.host.get(key)
            if page is not None:
                c["hicache_host_hit_tokens_total"] += P
            elif self.disk is not None and (page := self.disk.get(key)) is not None:
                c["hicache_disk_hit_tokens_total"] += P
                c["hicache_disk_read_bytes_total"] += page.numel() * page.element_size()
                if self.host.put(key, page):
                    c["hicache_host_stored_bytes_total"] += page.numel() * page.element_size()
            else:
                break
            pages.append(page)
        return pages

    def write(self, slots: list[int], pages: list[torch.Tensor]) -> None:
        data = self.copier.to_device(pages)
        self.write_kv(slots, data)
        self.counters["hicache_loaded_bytes_total"] += data.numel() * data.element_size()

    def flush(self) -> int:
        """Drop the host tier (with the device's prefix cache). The disk tier stays: it is
        there to outlive this process and other servers may share it (`flush_disk`)."""
        self.settle(wait=True)
        return self.host.clear()

    def flush_disk(self) -> int:
        self.settle(wait=True)
        return self.disk.clear() if self.disk is not None else 0

    def metrics(self) -> dict[str, int]:
        self.settle()
        c = self.counters
        out = {
            "hicache_host_pages": len(self.host),
            "hicache_host_bytes": self.host.nbytes,
            "hicache_disk_pages": len(self.disk) if self.disk is not None else 0,
            "hicache_disk_bytes": self.disk.nbytes if self.disk is not None else 0,
            "hicache_disk_rejected_total": self.disk.rejected if self.disk is not None else 0,
            "hicache_disk_written_bytes_total": self.disk.written_bytes if self.disk is not None else 0,
            "hicache_disk_dropped_total": self.disk.dropped if self.disk is not None else 0,
            "hicache_capacity_tokens": self.capacity_tokens,
        }
        out.update({name: c[name] for name in METRICS if name not in out})
        return out

    @property
    def capacity_tokens(self) -> int:
        cap = max(self.host.capacity, self.disk.capacity if self.disk is not None else 0)
        return cap // self.token_bytes if self.token_bytes else 0

    def close(self) -> None:
        """At the engine's end: every landed page to the tiers, and the disk's queue written."""
        self.settle(wait=True)
        if self.disk is not None:
            self.disk.close()

    def check(self) -> None:
        self.settle(wait=True)
        self.host.check()
        if self.disk is not None:
            self.disk.check()


def build_tiers(settings: Any, runner: Any, cache: Any, model: Any, backend: str) -> KVTiers | None:
    """The tiers `settings` ask for, or None; refuses a runner or cache that cannot take them."""
    if not settings.enable_hierarchical_cache:
        return None
    if runner.read_kv is None or runner.write_kv is None:
        raise ValueError(f"--enable-hierarchical-cache: the {backend} backend cannot copy KV pages "
                         "(its runner has no read_kv/write_kv)")
    if not hasattr(cache, "on_evict"):
        raise ValueError(f"--enable-hierarchical-cache needs a cache that reports evictions "
                         f"(--cache-type radix), not {type(cache).__name__}")
    P = settings.page_size
    sample = runner.read_kv(list(range(P)))  # on the pool's device, or on the host
    host = HostTier(int(settings.hicache_size * GB))
    disk = None
    if settings.hicache_storage_backend == "file":
        disk = DiskTier(settings.hicache_storage_dir, int(settings.hicache_storage_size * GB),
                        model_fingerprint(model.path, backend, P, sample, random_weights=model.dummy,
                                          tp_size=settings.tp_size),
                        sample.dtype, tuple(sample.shape))
    log.info("hierarchical cache: host tier %.2f GB, disk tier %s, write policy %s", settings.hicache_size,
             disk.dir if disk is not None else "off", settings.hicache_write_policy)
    return KVTiers(P, runner.read_kv, runner.write_kv, host, disk,
                   settings.hicache_write_policy == "write_through", sample.nbytes // P,
                   HostCopier(runner.device))


def cache_stats(counters: Counter[str], page_size: int, device_tokens: int, tiers: KVTiers | None) -> dict[str, Any]:
    """Each tier's size and hits (`minisgl control cache_stats`). A tier's hit rate is the
    share of prompt tokens it served, so the tiers' rates add up to the share served from
    cache; tokens loaded back from host or disk count for that tier, not the device's."""
    prompt = counters["prompt_tokens_total"]
    tc = tiers.counters if tiers is not None else Counter()
    host_hits, disk_hits = tc["hicache_host_hit_tokens_total"], tc["hicache_disk_hit_tokens_total"]

    def tier(pages: int, nbytes: int | None, hits: int) -> dict[str, Any]:
        return {"pages": pages, "bytes": nbytes, "hit_tokens": hits,
                "hit_rate": round(hits / prompt, 4) if prompt else 0.0}

    out = {"prompt_tokens": prompt,
           "device": tier(device_tokens // page_size, device_tokens * tiers.token_bytes if tiers else None,
                          counters["cached_tokens_total"] - host_hits - disk_hits)}
    if tiers is not None:
        out["host"] = tier(len(tiers.host), tiers.host.nbytes, host_hits)
        if tiers.disk is not None:
            # pages and bytes: this model's files and every other model's sharing the directory
            out["disk"] = tier(len(tiers.disk), tiers.disk.nbytes, disk_hits)
    return out
