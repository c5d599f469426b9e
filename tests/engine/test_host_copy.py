"""The hierarchical cache's copies to the host (cache/host_copy.py, KVTiers' landing queue):
on CPU a copy is there at once; pages whose copy is in flight join the tiers only once it
has landed, in copy order, and every reader (a load, a flush, the invariants) waits for
the pages it needs. The in-flight path runs here with a stand-in for a CUDA event, and
with CUDA's own where a GPU is present."""

from __future__ import annotations

import pytest
import torch

from minisgl.cache.host_copy import HostCopier, Landing
from minisgl.cache.host_tier import HostTier
from minisgl.cache.tiers import KVTiers, page_keys
from minisgl.engine.batch import to_device

P = 4


class FakeEvent:
    def __init__(self) -> None:
        self.landed = False
        self.waited = 0

    def query(self) -> bool:
        return self.landed

    def synchronize(self) -> None:
        self.waited += 1
        self.landed = True


class InFlightCopier(HostCopier):
    """Copies as the CPU does, but says they land only when the test says so."""

    def __init__(self) -> None:
        super().__init__(torch.device("cpu"))
        self.events: list[FakeEvent] = []

    def to_host(self, data, page_size):
        pages, _ = super().to_host(data, page_size)
        self.events.append(FakeEvent())
        return pages, Landing(self.events[-1])


def _pool(slots: int = 64) -> torch.Tensor:
    return torch.arange(slots * 6, dtype=torch.float32).view(slots, 2, 3)


def _tiers(pool: torch.Tensor, copier: HostCopier) -> KVTiers:
    def write_kv(slots, data):
        pool[torch.tensor(slots)] = data

    return KVTiers(P, lambda slots: pool[torch.tensor(slots)].clone(), write_kv, HostTier(1 << 20), None,
                   write_through=True, token_bytes=6 * 4, copier=copier)


def test_cpu_copies_are_there_at_once_each_page_its_own_memory():
    data = _pool(8)
    pages, landing = HostCopier(torch.device("cpu")).to_host(data, P)
    assert landing.done() and len(pages) == 2
    assert torch.equal(torch.cat(pages), data)
    data.zero_()  # the pages are copies, not views of what the pool will overwrite
    assert pages[0].abs().sum() > 0 and pages[1].untyped_storage().data_ptr() != pages[0].untyped_storage().data_ptr()


def test_pages_in_flight_join_the_tiers_once_landed_and_readers_wait_for_them():
    pool = _pool()
    copier = InFlightCopier()
    tiers = _tiers(pool, copier)
    ids = list(range(100, 116))  # 4 pages
    expected = pool[:16].clone()
    tiers.store(ids[:8], list(range(8)))
    tiers.store(ids, list(range(8, 16)))  # pages 3 and 4: its own copy
    assert len(tiers.host) == 0 and tiers.metrics()["hicache_host_pages"] == 0  # nothing landed yet
    copier.events[1].landed = True  # the later copy landed first: still in copy order
    tiers.settle()
    assert len(tiers.host) == 0
    copier.events[0].landed = True
    tiers.settle()
    assert len(tiers.host) == 4 and tiers.metrics()["hicache_host_stored_bytes_total"] == 16 * 6 * 4

    # a load that needs a page in flight waits for it and finds it
    other = list(range(200, 208))
    tiers.store(other, list(range(16, 24)))
    assert len(tiers.host) == 4
    pool[16:24] = 0  # the pool reuses the slots: what was copied stays what it was
    pages = tiers.load(other, 0)
    assert copier.events[2].waited == 1 and len(pages) == 2
    assert torch.equal(torch.cat(pages), _pool()[16:24])
    assert torch.equal(torch.cat(tiers.load(ids, 0)), expected)
    tiers.write(list(range(40, 56)), tiers.load(ids, 0))
    assert torch.equal(pool[40:56], expected)


def test_flush_and_the_invariants_wait_for_copies_in_flight():
    pool = _pool()
    copier = InFlightCopier()
    tiers = _tiers(pool, copier)
    tiers.store(list(range(8)), list(range(8)))
    tiers.check()  # waits: the host tier's accounting covers every page
    assert copier.events[0].waited == 1 and len(tiers.host) == 2
    tiers.store(list(range(50, 58)), list(range(8, 16)))
    assert tiers.flush() == 4 and len(tiers.host) == 0 and not tiers._landing
    # a page already in flight is not copied twice
    tiers.store(list(range(60, 68)), list(range(16, 24)))
    tiers.store(list(range(60, 68)), list(range(16, 24)))
    assert len(copier.events) == 3 and page_keys(list(range(60, 68)), P)[0] in tiers._landing


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_pages_land_pinned_without_blocking_and_survive_the_pool_overwriting_them():
    device = torch.device("cuda")
    pool = torch.randn(4096, 2, 8, 128, device=device)
    original = pool.clone()
    copier = HostCopier(device)
    # slot lists go through pinned memory (engine.batch.to_device), as the runners send them: a
    # pageable copy would wait for the busy stream
    tiers = KVTiers(P, lambda slots: pool[to_device(slots, device)].contiguous(),
                    lambda slots, data: pool.index_copy_(0, to_device(slots, device), data),
                    HostTier(1 << 30), None, write_through=True, token_bytes=pool[0].nbytes, copier=copier)
    ids = list(range(4096))
    # pinned host memory is slow to allocate the first time (cudaHostAlloc), and torch caches
    # it: a first round makes the timed store's allocations fast, so its copies cannot land
    # while it still allocates
    tiers.store(ids, list(range(4096)))
    tiers.flush()
    torch.cuda._sleep(4_000_000_000)  # the step's stream is busy: the copies queue behind it
    tiers.store(ids, list(range(4096)))
    pool.mul_(0)  # the next step overwrites the slots the pages came from
    assert tiers._landing  # store returned before its copies landed
    tiers.check()  # waits for them
    pages = tiers.load(ids, 0)
    assert len(pages) == 4096 // P and all(p.is_pinned() for p in pages)
    tiers.write(list(range(4096)), pages)
    torch.cuda.synchronize()
    assert torch.equal(pool, original)
