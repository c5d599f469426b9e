"""Where the data-plane sockets live: ipc:// files under a private temp dir (the default on
POSIX) or loopback tcp (MINISGL_IPC_TRANSPORT=tcp, or where ipc:// is unavailable)."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass

import zmq


@dataclass(frozen=True)
class ReplicaEndpoints:
    """The server binds both; the engine process connects. `requests` carries frames to the
    engine, `outputs` frames back."""

    requests: str
    outputs: str


class EndpointAllocator:
    """Hands out endpoints for replicas and removes the ipc files when closed."""

    def __init__(self, transport: str | None = None) -> None:
        transport = transport or os.environ.get("MINISGL_IPC_TRANSPORT", "")
        if not transport:
            transport = "ipc" if zmq.has("ipc") else "tcp"
        if transport not in ("ipc", "tcp"):
            raise ValueError(f"MINISGL_IPC_TRANSPORT must be 'ipc' or 'tcp', got {transport!r}")
        self.transport = transport
        self._tmpdir = tempfile.mkdtemp(prefix="minisgl-ipc-") if transport == "ipc" else None

    def for_replica(self, index: int) -> ReplicaEndpoints:
        if self._tmpdir is not None:
            return ReplicaEndpoints(
                requests=f"ipc://{self._tmpdir}/engine{index}-requests",
                outputs=f"ipc://{self._tmpdir}/engine{index}-outputs",
            )
        # The binder picks a free port; it reads the real one back (zmq.LAST_ENDPOINT).
        return ReplicaEndpoints(requests="tcp://127.0.0.1:*", outputs="tcp://127.0.0.1:*")

    def close(self) -> None:
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
