"""The disk tier under the prefix cache: KV pages in files that outlive the process.

One file a page, named by the model's fingerprint and the page's key. A file carries its
fingerprint, key, dtype and shape in a header and a SHA-256 of header and payload at the
end, so a truncated, corrupt or foreign file is recognised on load, removed and never
served (the page is recomputed). Files are written to a temporary name and renamed into
place, so a reader (another server sharing the directory included) sees a whole file or
none. The directory is capped in bytes, least recently used first; the index of what is
there is rebuilt from the directory at start.

Writes run on one writer thread, off the engine's loop: `put` queues the page (a host
tensor of its own that nobody writes: `HostCopier.to_host` made it) and returns. Until its
file is in place a queued page is served from the queue, so a page is found from the
moment it is put, never half-written; `clear` drops what is queued with the files, and a
write that was under way when it ran is discarded instead of renamed into place. The
queue is bounded: a page that finds it full is not written (it is a cache; the engine
never waits on the disk). `close` drains the queue, waiting a bounded time. A write that
fails is logged (once) and its page dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import struct
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

import torch

log = logging.getLogger("minisgl.cache")

MAGIC = b"MSGLKV1\n"
SUFFIX = ".kvpage"
STALE_TEMP_S = 600  # a page write takes milliseconds: a temporary file this old lost its writer
MAX_QUEUED = 256  # pages waiting for the writer thread (host memory they keep alive)
CLOSE_WAIT_S = 30.0  # how long close waits for the queue to drain


class DiskTier:
    def __init__(self, directory: str, capacity_bytes: int, fingerprint: str,
                 page_dtype: torch.dtype, page_shape: tuple[int, ...], max_queued: int = MAX_QUEUED) -> None:
        self.dir = Path(directory).expanduser()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.capacity = capacity_bytes
        self.fingerprint = fingerprint
        self.dtype = page_dtype
        self.shape = list(page_shape)
        self.rejected = 0
        self.written_bytes = 0  # bytes of the files this tier wrote (counted once in place)
        self.dropped = 0  # pages not written: the queue was full, or the write failed
        self._lock = threading.Lock()  # the index, the counts and the queued pages; the writer's too
        # pages put, not in their files yet: served from here (the queue holds the same pairs)
        self._pending: dict[str, torch.Tensor] = {}
        self._queue: queue.Queue[tuple[str, torch.Tensor] | None] = queue.Queue(max_queued)
        self._write_failed = False
        self._writer: threading.Thread | None = None
        self._closed = False
        # every page file in the directory (any model's: the cap is the directory's), oldest first
        self._files: OrderedDict[str, int] = OrderedDict()
        found = []
        for entry in os.scandir(self.dir):
            if entry.name.startswith(".tmp-") and time.time() - entry.stat().st_mtime > STALE_TEMP_S:
                Path(entry.path).unlink(missing_ok=True)  # a writer that died mid-write
            elif entry.name.endswith(SUFFIX) and entry.is_file():
                st = entry.stat()
                found.append((st.st_mtime, entry.name, st.st_size))
        for _, name, size in sorted(found):
            self._files[name] = size
        self.nbytes = sum(self._files.values())
        self._evict()
        mine = sum(1 for n in self._files if n.startswith(self._prefix))
        log.info("disk KV tier %s: %d page files (%d of this model), %.1f MiB of %.1f MiB",
                 self.dir, len(self._files), mine, self.nbytes / 2**20, capacity_bytes / 2**20)

    @property
    def _prefix(self) -> str:
        return self.fingerprint[:16] + "-"

    def _name(self, key: str) -> str:
        return f"{self._prefix}{key}{SUFFIX}"

    def __contains__(self, key: str) -> bool:
        return key in self._pending or (self.dir / self._name(key)).is_file()

    def __len__(self) -> int:
        return len(self._files)

    @property
    def queued(self) -> int:
        return len(self._pending)

    def put(self, key: str, page: torch.Tensor) -> bool:
        """Queue `page` (a host tensor nobody writes) for the file under `key`; False when
        it is there already or the queue is full (then it is not written)."""
        if self._closed or key in self:
            return False
        with self._lock:
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="minisgl-kv-disk", daemon=True)
                self._writer.start()
            try:
                self._queue.put_nowait((key, page))
            except queue.Full:
                self.dropped += 1
                return False
            self._pending[key] = page
        return True

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queued page is written (or dropped); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._queue.all_tasks_done.wait(left)
        return True

    def close(self, timeout: float = CLOSE_WAIT_S) -> None:
        """Write what is queued (waiting at most `timeout`), then stop the writer."""
        if self._closed:
            return
        self._closed = True
        writer = self._writer
        if writer is None:
            return
        if not self.drain(timeout):
            log.warning("disk KV tier: %d page writes still queued after %.0f s at shutdown: not written",
                        self.queued, timeout)
            with self._lock:
                self._pending.clear()  # the writer skips what is no longer pending
        try:
            self._queue.put_nowait(None)
        except queue.Full:  # full behind a stuck write: the writer is a daemon thread, it ends with the process
            return
        writer.join(timeout=1.0)

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._write(*item)
            except Exception as exc:  # never let one page end the writer
                self._write_error(*item, exc)
            finally:
                self._queue.task_done()

    def _write_error(self, key: str, page: torch.Tensor, exc: BaseException) -> None:
        with self._lock:
            if self._pending.get(key) is page:
                del self._pending[key]
            self.dropped += 1
            first, self._write_failed = not self._write_failed, True
        (log.warning if first else log.debug)("disk KV tier: cannot write the page %s (dropped, recomputed when "
                                              "needed; later failures are logged at debug): %s", key, exc)

    def _write(self, key: str, page: torch.Tensor) -> None:
        """The writer thread's work for one queued page: the file, whole, or nothing."""
        with self._lock:
            if self._pending.get(key) is not page:  # cleared while queued
                return
        name = self._name(key)
        if (self.dir / name).is_file():  # another server wrote it meanwhile
            with self._lock:
                self._pending.pop(key, None)
            return
        header = json.dumps({"fingerprint": self.fingerprint, "key": key, "dtype": str(page.dtype),
                             "shape": list(page.shape)}).encode()
        payload = page.contiguous().view(torch.uint8).numpy().tobytes()
        head = MAGIC + struct.pack("<I", len(header)) + header
        digest = hashlib.sha256(head + payload).digest()
        size = len(head) + len(payload) + len(digest)
        if size > self.capacity:
            with self._lock:
                self._pending.pop(key, None)
            return
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(head)
                f.write(payload)
                f.write(digest)
            with self._lock:  # in place and counted at once, unless cleared meanwhile
                if self._pending.get(key) is not page:
                    return
                os.replace(tmp, self.dir / name)
                del self._pending[key]
                self._files[name] = size
                self.nbytes += size
                self.written_bytes += size
                self._evict()
        finally:
            Path(tmp).unlink(missing_ok=True)  # not renamed: written for nothing

    def get(self, key: str) -> torch.Tensor | None:
        """The page under `key`, or None when absent or not a whole, matching file."""
        queued = self._pending.get(key)
        if queued is not None:
            return queued
        name = self._name(key)
        path = self.dir / name
        try:
            blob = path.read_bytes()
        except OSError:
            return None
        page = self._parse(blob, key)
        with self._lock:
            if page is None:
                self.rejected += 1
                log.warning("disk KV tier: %s is truncated, corrupt or another model's: removed, not served", name)
                self._forget(name)
                return None
            if name in self._files:
                self._files.move_to_end(name)
            else:  # another server wrote it
                self._files[name] = len(blob)
                self.nbytes += len(blob)
                self._evict()
        try:
            os.utime(path)  # recency for the LRU of a later start
        except OSError:
            pass
        return page

    def _parse(self, blob: bytes, key: str) -> torch.Tensor | None:
        head_end = len(MAGIC) + 4
        if len(blob) < head_end + 32 or not blob.startswith(MAGIC):
            return None
        (hlen,) = struct.unpack("<I", blob[len(MAGIC) : head_end])
        if head_end + hlen + 32 > len(blob) or hashlib.sha256(blob[:-32]).digest() != blob[-32:]:
            return None
        try:
            header = json.loads(blob[head_end : head_end + hlen])
        except ValueError:
            return None
        if (header.get("fingerprint") != self.fingerprint or header.get("key") != key
                or header.get("dtype") != str(self.dtype) or header.get("shape") != self.shape):
            return None
        payload = bytearray(blob[head_end + hlen : -32])
        expected = torch.Size(self.shape).numel() * torch.empty((), dtype=self.dtype).element_size()
        if len(payload) != expected:
            return None
        return torch.frombuffer(payload, dtype=torch.uint8).view(self.dtype).view(self.shape)

    def _forget(self, name: str) -> None:
        (self.dir / name).unlink(missing_ok=True)
        size = self._files.pop(name, None)
        if size is not None:
            self.nbytes -= size

    def _evict(self) -> None:
        while self.nbytes > self.capacity and self._files:
            self._forget(next(iter(self._files)))

    def clear(self) -> int:
        """Remove this model's page files and drop its queued pages; how many of both."""
        with self._lock:
            queued = len(self._pending)
            self._pending.clear()  # the writer skips them, and discards a write under way
            mine = [n for n in self._files if n.startswith(self._prefix)]
            for name in mine:
                self._forget(name)
        return len(mine) + queued

    def check(self) -> None:
        with self._lock:
            total = sum(self._files.values())
            if self.nbytes != total or self.nbytes > self.capacity:
                raise AssertionError(f"disk KV tier counts {self.nbytes} bytes of {total}, cap {self.capacity}")
            if len(self._pending) > self._queue.maxsize:
                raise AssertionError(f"disk KV tier: {len(self._pending)} pages pending, queue of {self._queue.maxsize}")
