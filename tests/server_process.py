"""Run the real `minisgl serve` in a subprocess on a free loopback port, for tests
(shared by tests/server and tests/pool)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    """A loopback port whose next port is free too: `--tp-size > 1` meets its ranks on --port + 1."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as first, \
                socket.socket(socket.AF_INET, socket.SOCK_STREAM) as second:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            try:
                second.bind(("127.0.0.1", port + 1))
            except (OSError, OverflowError):  # taken, or past 65535
                continue
            return port


class ServerProcess:
    def __init__(
        self,
        model_path: str,
        *args: str,
        env: dict[str, str] | None = None,
        log_dir: Path,
        python: str | Path = sys.executable,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"server-{self.port}.log"
        cmd = [
            str(python), "-m", "minisgl", "serve",
            "--model-path", model_path,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--num-pages", "16384",  # a small KV pool: the tests need little
            *args,
        ]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
        )

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                health = httpx.get(self.url + "/health", timeout=2)
                if health.status_code == 200:
                    return
                if any(e["state"] == "dead" for e in health.json().get("engines", [])):
                    raise RuntimeError(f"engine died while the server started:\n{self.log()}")
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"server not ready in {timeout}s:\n{self.log()}")

    def log(self, tail: int | None = 6000) -> str:
        """The server's output: its last `tail` characters (for error messages), or all of it
        (None: for assertions on what it logged early)."""
        self._log.flush()
        text = self.log_path.read_text()
        return text if tail is None else text[-tail:]

    def stop(self) -> None:
        """Ctrl-C: the server drains (up to DRAIN_TIMEOUT_S); a second Ctrl-C ends the drain."""
        for _ in range(2):
            if self.proc.poll() is not None:
                break
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self._log.close()


def start_server(
    model_path: str,
    *args: str,
    log_dir: Path,
    env: dict[str, str] | None = None,
    python: str | Path = sys.executable,
) -> ServerProcess:
    server = ServerProcess(model_path, *args, env=env, log_dir=log_dir, python=python)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def start_server_with_control(model_path: str, *args: str, log_dir: Path, env: dict[str, str] | None = None) -> ServerProcess:
    """`start_server` with the ZMQ control plane on a free loopback port (`server.endpoint`)."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    server = start_server(model_path, *args, log_dir=log_dir,
                          env={**(env or {}), "ZMQ_CONTROL": "1", "ZMQ_CONTROL_ENDPOINT": endpoint})
    server.endpoint = endpoint  # type: ignore[attr-defined]
    return server
