"""`minisgl bench contention`: the decode step on a quiet machine and beside busy neighbours.

A CPU serving engine always shares its machine: with its own server process, a second
server, someone's build. Each system under test loads once in a worker process
(contention_worker.py); for each mix of neighbours the neighbours start, settle, and the
worker times its decode step; then they stop. The ratio to the quiet step is what a user
feels: on two cores beside one single-threaded neighbour a fair share costs about 2x.

Neighbours: `cpu` is a single-threaded process multiplying 512x512 matrices in a loop; `engine`
is a second minisgl engine decoding 4 requests without pause. Every process runs in a process
group of its own and the group is ended, so nothing outlives the run (vLLM's engine core
would otherwise keep a core busy)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minisgl.cpu_threads import SPIN_ENV

WORKER = str(Path(__file__).with_name("contention_worker.py"))
BUSY_CPU = ("import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\n"
            "while True:\n    a = torch.tanh(a @ a)\n")
NEIGHBOURS = ("cpu", "engine")
SETTLE_S = 3.0
PROMPT_LEN, SHORT, LONG = 128, 8, 40  # the worker's prompts, and the two output lengths a step is timed between


def read_floor_ms(path: str, dtype: str, batch: int) -> tuple[float, str]:
    """The time to read what a decode step of the worker's batch must read (every weight once,
    each row's K and V) at the copy bandwidth measured now, and how it was computed."""
    import torch

    from .roofline import ModelShape, measure_ceilings

    torch_dtype = getattr(torch, dtype)
    shape = ModelShape.of(path, torch_dtype)
    context = PROMPT_LEN + (SHORT + LONG) / 2  # the timed steps' mean context
    read = shape.step_weight_bytes(batch) + shape.kv_bytes_per_token * batch * context
    bandwidth = measure_ceilings("cpu", torch_dtype).bandwidth
    return read / bandwidth * 1000, f"{read / 1e6:.0f} MB at {bandwidth / 1e9:.1f} GB/s, the copy bandwidth measured now"


def parse_mix(text: str) -> list[str]:
    """`quiet` -> [], `engine+cpu` -> ["engine", "cpu"]."""
    if text == "quiet":
        return []
    parts = text.split("+")
    bad = [p for p in parts if p not in NEIGHBOURS]
    if bad:
        raise ValueError(f"unknown neighbour(s) {bad} in mix {text!r}; use quiet or a +-list of {', '.join(NEIGHBOURS)}")
    return parts


LOGS = Path(tempfile.gettempdir()) / "minisgl-bench-contention"


class Group:
    """A child in a process group of its own, ended as a group; its stderr goes to a log."""

    def __init__(self, cmd: list[str], name: str, env: dict[str, str] | None = None, stdin: bool = False) -> None:
        LOGS.mkdir(exist_ok=True)
        self.log = LOGS / f"{name}.log"
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=err, text=True,
                                         start_new_session=True, env=env)

    def expect(self, prefix: str, timeout_s: float = 900.0) -> str:
        deadline = time.monotonic() + timeout_s
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return line[len(prefix):].strip()
            if time.monotonic() > deadline:
                break
        raise RuntimeError(f"{self.proc.args[:4]}... ended or timed out before printing {prefix!r} "
                           f"(exit code {self.proc.poll()}; see {self.log})")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


@dataclass
class System:
    name: str  # as printed
    cmd: list[str]  # the worker's command line
    env: dict[str, str] | None = None
    steps: dict[str, float] = field(default_factory=dict)  # mix -> median step ms

    def ratio(self, mix: str) -> float:
        return self.steps[mix] / self.steps["quiet"]


def worker_cmd(python: str, engine: str, model: str, dtype: str, batch: int, options: dict[str, Any] | None = None,
               load: bool = False) -> list[str]:
    cmd = [python, WORKER, "--engine", engine, "--model", model, "--dtype", dtype, "--batch", str(batch),
           "--prompt-len", str(PROMPT_LEN), "--short", str(SHORT), "--long", str(LONG), "--options", json.dumps(options or {})]
    return cmd + (["--load"] if load else [])


def start_neighbours(mix: list[str], model: str, dtype: str) -> list[Group]:
    groups = []
    for i, kind in enumerate(mix):
        if kind == "cpu":
            groups.append(Group([sys.executable, "-c", BUSY_CPU], f"neighbour-{i}-cpu"))
        else:
            g = Group(worker_cmd(sys.executable, "minisgl", model, dtype, batch=4, load=True), f"neighbour-{i}-engine",
                      env={**os.environ, **SPIN_ENV})
            g.expect("READY")
            groups.append(g)
    return groups


def measure(systems: list[System], mixes: list[str], model: str, dtype: str, progress: Any = None) -> None:
    """Fill each system's `steps`: its worker stays loaded while the neighbours change."""
    for system in systems:
        worker = Group(system.cmd, system.name, env=system.env, stdin=True)
        try:
            worker.expect("READY")
            for mix in mixes:
                neighbours = start_neighbours(parse_mix(mix), model, dtype)
                try:
                    time.sleep(SETTLE_S if neighbours else 0.0)
                    assert worker.proc.stdin is not None
                    worker.proc.stdin.write("measure\n")
                    worker.proc.stdin.flush()
                    system.steps[mix] = json.loads(worker.expect("STEP"))["step_ms"]
                finally:
                    for g in neighbours:
                        g.stop()
                if progress is not None:
                    progress(system, mix)
        finally:
            worker.stop()
