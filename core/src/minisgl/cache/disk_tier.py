"""The disk tier under the prefix cache: KV pages in files that outlive the process.

One file a page, named by the model's fingerprint and the page's key. A file carries its
fingerprint, key, dtype and shape in a header and a SHA-256 of header and payload at the
end, so a truncated, corrupt or foreign file is recognised on load, removed and never
served (the page is recomputed). Files are written to a temporary name and renamed into
place, so a reader (another server sharing the directory included) sees a whole file or
none. The directory is capped in bytes, least recently used first; the index of what is
there is rebuilt from the directory at start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import torch

log = logging.getLogger("minisgl.cache")

MAGIC = b"MSGLKV1\n"
SUFFIX = ".kvpage"
STALE_TEMP_S = 600  # a page write takes milliseconds: a temporary file this old lost its writer


class DiskTier:
    def __init__(self, directory: str, capacity_bytes: int, fingerprint: str,
                 page_dtype: torch.dtype, page_shape: tuple[int, ...]) -> None:
        self.dir = Path(directory).expanduser()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.capacity = capacity_bytes
        self.fingerprint = fingerprint
        self.dtype = page_dtype
        self.shape = list(page_shape)
        self.rejected = 0
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
        return (self.dir / self._name(key)).is_file()

    def __len__(self) -> int:
        return len(self._files)

    def put(self, key: str, page: torch.Tensor) -> int:
        """Write `page` under `key`; the bytes written (0: there already, or over the cap)."""
        name = self._name(key)
        if (self.dir / name).is_file():
            return 0
        header = json.dumps({"fingerprint": self.fingerprint, "key": key, "dtype": str(page.dtype),
                             "shape": list(page.shape)}).encode()
        payload = page.contiguous().view(torch.uint8).numpy().tobytes()
        head = MAGIC + struct.pack("<I", len(header)) + header
        digest = hashlib.sha256(head + payload).digest()
        size = len(head) + len(payload) + len(digest)
        if size > self.capacity:
            return 0
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(head)
                f.write(payload)
                f.write(digest)
            os.replace(tmp, self.dir / name)
        except OSError as exc:
            log.warning("disk KV tier: cannot write %s: %s", name, exc)
            Path(tmp).unlink(missing_ok=True)
            return 0
        self._files[name] = size
        self.nbytes += size
        self._evict()
        return size

    def get(self, key: str) -> torch.Tensor | None:
        """The page under `key`, or None when absent or not a whole, matching file."""
        name = self._name(key)
        path = self.dir / name
        try:
            blob = path.read_bytes()
        except OSError:
            return None
        page = self._parse(blob, key)
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
        """Remove this model's page files."""
        mine = [n for n in self._files if n.startswith(self._prefix)]
        for name in mine:
            self._forget(name)
        return len(mine)

    def check(self) -> None:
        if self.nbytes != sum(self._files.values()) or self.nbytes > self.capacity:
            raise AssertionError(f"disk KV tier counts {self.nbytes} bytes of {sum(self._files.values())}, "
                                 f"cap {self.capacity}")
