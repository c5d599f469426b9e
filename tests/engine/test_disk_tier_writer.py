"""The disk tier writes its page files on a thread of its own (cache/disk_tier.py): a page is
served from the moment it is put (from the queue, then from its file), `clear` drops what is
queued and discards a write under way, the byte cap holds, `close` drains the queue, and a
write that fails is dropped without taking the writer down. The writer is held at the
start of a write (its temporary file) to catch pages while they are queued."""

from __future__ import annotations

import logging
import os
import tempfile
import threading

import pytest
import torch

from minisgl.cache import disk_tier
from minisgl.cache.disk_tier import DiskTier

SHAPE = (4, 6)


def page(i: int) -> torch.Tensor:
    return torch.full(SHAPE, float(i))


def tier(path, capacity: int = 1 << 20, **kw) -> DiskTier:
    return DiskTier(str(path), capacity, "f" * 64, torch.float32, SHAPE, **kw)


@pytest.fixture
def held(monkeypatch):
    """Hold the writer thread as it starts its next file until `release` is set."""
    reached, release = threading.Event(), threading.Event()
    real = tempfile.mkstemp

    def slow_mkstemp(*args, **kw):
        if threading.current_thread().name == "minisgl-kv-disk":
            reached.set()
            assert release.wait(30)
        return real(*args, **kw)

    monkeypatch.setattr(disk_tier.tempfile, "mkstemp", slow_mkstemp)
    return reached, release


def test_a_queued_page_is_served_from_the_queue_then_from_its_file(tmp_path, held):
    reached, release = held
    t = tier(tmp_path)
    assert t.put("k0", page(0)) and t.put("k1", page(1))
    assert reached.wait(30)  # the writer is inside k0's write; k1 waits in the queue
    assert "k0" in t and "k1" in t and t.queued == 2
    assert torch.equal(t.get("k1"), page(1)) and torch.equal(t.get("k0"), page(0))
    assert not list(tmp_path.glob("*.kvpage")) and t.written_bytes == 0  # counted once written
    t.check()
    assert not t.put("k1", page(1))  # queued already: not twice
    release.set()
    assert t.drain(timeout=30)
    assert t.queued == 0 and len(list(tmp_path.glob("*.kvpage"))) == 2 and len(t) == 2
    assert t.written_bytes == t.nbytes > 0
    fresh = tier(tmp_path)  # what a later process finds
    assert torch.equal(fresh.get("k1"), page(1)) and torch.equal(fresh.get("k0"), page(0))
    t.check()
    fresh.check()


def test_clear_drops_queued_pages_and_the_write_under_way(tmp_path, held):
    reached, release = held
    t = tier(tmp_path)
    for i in range(3):
        t.put(f"k{i}", page(i))
    assert reached.wait(30)
    assert t.clear() == 3
    assert "k0" not in t and t.get("k2") is None
    release.set()
    assert t.drain(timeout=30)
    assert not list(tmp_path.iterdir())  # no page file, no temporary one
    assert t.nbytes == 0 and t.written_bytes == 0 and len(t) == 0
    t.check()
    assert t.put("k0", page(0)) and t.drain(timeout=30) and "k0" in t  # it takes pages again


def test_cap_is_honoured_by_the_writer(tmp_path):
    probe = tier(tmp_path / "probe")
    probe.put("kx", page(0))  # a key as long as theirs: files of one size
    assert probe.drain(timeout=30)
    size = probe.written_bytes
    t = tier(tmp_path / "capped", capacity=3 * size)
    for i in range(8):
        t.put(f"k{i}", page(i))
        t.check()
    assert t.drain(timeout=30)
    files = list((tmp_path / "capped").glob("*.kvpage"))
    assert len(files) == 3 and t.nbytes == 3 * size == sum(f.stat().st_size for f in files)
    assert [k for k in (f"k{i}" for i in range(8)) if k in t] == ["k5", "k6", "k7"]  # least recently used went
    t.check()


def test_a_full_queue_drops_the_page_instead_of_waiting(tmp_path, held):
    reached, release = held
    t = tier(tmp_path, max_queued=2)
    assert t.put("k0", page(0))
    assert reached.wait(30)  # k0 is out of the queue, in the writer's hands
    assert t.put("k1", page(1)) and t.put("k2", page(2))
    assert not t.put("k3", page(3)) and t.dropped == 1 and "k3" not in t
    release.set()
    assert t.drain(timeout=30)
    assert len(t) == 3 and "k3" not in t
    t.check()


def test_close_drains_the_queue_and_stops_the_writer(tmp_path):
    t = tier(tmp_path)
    for i in range(20):
        t.put(f"k{i}", page(i))
    writer = t._writer
    t.close()
    assert writer is not None and not writer.is_alive()
    assert len(list(tmp_path.glob("*.kvpage"))) == 20 and t.queued == 0
    assert not t.put("late", page(0))  # closed: nothing more is queued
    t.close()  # twice is harmless
    fresh = tier(tmp_path)
    assert all(torch.equal(fresh.get(f"k{i}"), page(i)) for i in range(20))


def test_close_waits_a_bounded_time(tmp_path, held):
    reached, release = held
    t = tier(tmp_path)
    t.put("k0", page(0))
    t.put("k1", page(1))
    assert reached.wait(30)
    t.close(timeout=0.2)  # the writer is stuck: close returns anyway
    assert t.queued == 0
    release.set()
    t._writer.join(30)
    assert not t._writer.is_alive()
    assert not list(tmp_path.glob("*.kvpage"))  # what close gave up on is not written late


def test_a_failed_write_is_logged_once_and_dropped(tmp_path, monkeypatch, caplog):
    t = tier(tmp_path)
    real = os.replace

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(disk_tier.os, "replace", full_disk)
    with caplog.at_level(logging.DEBUG, logger="minisgl.cache"):
        for i in range(3):
            t.put(f"k{i}", page(i))
        assert t.drain(timeout=30)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "cannot write" in r.getMessage()]
    assert len(warnings) == 1 and "No space left" in warnings[0].getMessage()
    assert t.dropped == 3 and t.queued == 0 and len(t) == 0 and t.written_bytes == 0
    assert not list(tmp_path.iterdir())  # the temporary files went too
    monkeypatch.setattr(disk_tier.os, "replace", real)
    assert t.put("k0", page(0)) and t.drain(timeout=30) and "k0" in t  # the writer lives on
    t.check()
