"""Where the data-plane sockets live: ipc:// files under a private temp dir (the default on
POSIX) or tcp (MINISGL_IPC_TRANSPORT=tcp, or where ipc:// is unavailable): on loopback, or
on the address engines on other hosts reach (`host`, for Ray actors).

The temp dir is removed when the allocator closes, at interpreter exit if nobody closed it
(an exception, sys.exit), and by an engine process that outlives its server (kill -9 of
the server: the engine notices and removes it, see `remove_orphaned_dir`)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import zmq

from ..control.security import client_keys, server_keys

IPC_DIR_PREFIX = "minisgl-ipc-"


@dataclass(frozen=True)
class ReplicaEndpoints:
    """The server binds both; the engine process connects. `requests` carries frames to the
    engine, `outputs` frames back."""

    requests: str
    outputs: str
    # CURVE for the engine's side of both sockets (server public key, engine public and
    # secret keys, z85); None: plain
    curve: tuple[bytes, bytes, bytes] | None = None


class EndpointAllocator:
    """Hands out endpoints for replicas and removes the ipc files when closed."""

    def __init__(self, transport: str | None = None, host: str = "127.0.0.1", curve_root: Path | None = None) -> None:
        transport = transport or os.environ.get("MINISGL_IPC_TRANSPORT", "")
        if not transport:
            transport = "ipc" if zmq.has("ipc") else "tcp"
        if transport not in ("ipc", "tcp"):
            raise ValueError(f"MINISGL_IPC_TRANSPORT must be 'ipc' or 'tcp', got {transport!r}")
        self.transport = transport
        self.host = host
        # CURVE keys as the control plane keeps them (`minisgl control --curve-keygen DIR`):
        # the server's pair secures the bound sockets, the client's pair is the engines'
        self.server_keys: tuple[bytes, bytes] | None = None
        self._engine_keys: tuple[bytes, bytes, bytes] | None = None
        if curve_root is not None:
            self.server_keys = server_keys(curve_root)
            self._engine_keys = client_keys(curve_root)
        self._tmpdir = tempfile.mkdtemp(prefix=IPC_DIR_PREFIX) if transport == "ipc" else None
        if self._tmpdir is not None:
            atexit.register(self.close)

    def for_replica(self, index: int, generation: int = 0) -> ReplicaEndpoints:
        """`generation` counts the replica's restarts: a restarted engine gets fresh socket
        files, never the ones its dead predecessor's sockets were bound to."""
        if self._tmpdir is not None:
            name = f"engine{index}" if generation == 0 else f"engine{index}-g{generation}"
            return ReplicaEndpoints(
                requests=f"ipc://{self._tmpdir}/{name}-requests",
                outputs=f"ipc://{self._tmpdir}/{name}-outputs",
            )
        # The binder picks a free port; it reads the real one back (zmq.LAST_ENDPOINT).
        return ReplicaEndpoints(requests=f"tcp://{self.host}:*", outputs=f"tcp://{self.host}:*", curve=self._engine_keys)

    def close(self) -> None:
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
            atexit.unregister(self.close)


def remove_orphaned_dir(endpoints: ReplicaEndpoints) -> None:
    """Remove the server's ipc temp dir, for an engine whose server died without doing it.
    Only a directory of ours (named IPC_DIR_PREFIX...) is touched."""
    for endpoint in (endpoints.requests, endpoints.outputs):
        if endpoint.startswith("ipc://"):
            directory = Path(endpoint[len("ipc://"):]).parent
            if directory.name.startswith(IPC_DIR_PREFIX):
                shutil.rmtree(directory, ignore_errors=True)
