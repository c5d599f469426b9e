"""Where prepared models live, and how they get there safely.

Every prepared model is a directory under `<cache>/models/<name>`. It is built in a
temporary sibling directory and renamed into place only when complete, so a crash never
leaves a half-written model behind; a file lock makes two processes that resolve the same
model at once build it once (the second waits, then reuses the first one's result).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

CACHE_ENV = "MINISGL_CACHE_DIR"


def cache_dir() -> Path:
    """The minisgl cache root: $MINISGL_CACHE_DIR, else ~/.cache/minisgl."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "minisgl"


def prepared_model_dir(name: str) -> Path:
    return cache_dir() / "models" / name


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` (created if missing), released on exit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def build_once(name: str, build: Callable[[Path], None]) -> Path:
    """Return `<cache>/models/<name>`, calling `build(tmp_dir)` to create it if absent.

    `build` writes the complete model into the empty directory it is given.
    """
    final = prepared_model_dir(name)
    if final.is_dir():
        return final
    with file_lock(final.parent / f".{name}.lock"):
        if final.is_dir():  # another process finished it while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=final.parent))
        try:
            build(tmp)
            tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; a model dir is not
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    logger.info("prepared %s in %s", name, final)
    return final
