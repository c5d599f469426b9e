"""Tensor parallelism: one process per rank. Rank 0 is the engine's runner; ranks 1.. are
worker processes it starts, each holding its own shard of the weights and of the KV pool.

Every step rank 0 hands each worker the batch's host metadata through a queue (a worker may
wait for the next batch as long as the engine idles, which no collective's timeout allows)
and broadcasts its input ids as a tensor (in stream order on the device); every rank runs the
model on its shard (the row-parallel layers all-reduce, the LM head all-gathers the
vocabulary), and rank 0 samples. The group is NCCL on CUDA and gloo on the CPU; it meets at
127.0.0.1 on --port + 1, as mini-sglang's distributed init does.

Rank 0 watches its workers: before each step it polls their exit, and a step that fails
(gloo raises as soon as a peer's connection closes) names the rank that exited and its exit
code. A rank that is alive but stuck blocks rank 0 in a collective, which the server's
watchdog catches; a worker dies with rank 0 (the kernel kills it, even stopped), so killing
the engine leaves no rank behind.

The hierarchical cache's tiers (`--enable-hierarchical-cache`) run on rank 0 alone; each
rank's pool holds its own heads of every layer's K and V. Rank 0's `read_kv(slots)` hands
the workers a `KVCommand` through the same queue as the batches (so it lands between the
steps it was issued between) and receives each rank's slice point to point; a page is the
ranks' slices joined along the head dimension, in rank order ([N, 2, layers, heads of all
ranks, head_dim]; a KV head replicated over ranks is in it once a rank). `write_kv` sends
each rank its slice back. A page is only valid for this split of the heads: the tiers'
model fingerprint carries the TP size, so a TP=2 page file is never served to TP=1.
Without the tiers nothing of this runs: the step path is the same.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, Literal

import torch
import torch.distributed as dist

from minisgl.engine.batch import ForwardBatch
from minisgl.ipc.faults import Faults

logger = logging.getLogger(__name__)

DEFAULT_PORT = 1919  # the server's default --port, for engines started without one
COLLECTIVE_TIMEOUT = timedelta(minutes=10)  # a long CPU prefill is one collective away
EXIT_GRACE_S = 2.0  # a failed collective can be seen before the peer's exit is
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def init_port(settings: Any) -> int:
    """--port + 1; a server with several replicas gives each its own (MINISGL_TP_PORT)."""
    if os.environ.get("MINISGL_TP_PORT"):
        return int(os.environ["MINISGL_TP_PORT"])
    return int(getattr(settings, "port", None) or DEFAULT_PORT) + 1


def bind_store(port: int, size: int) -> dist.TCPStore:
    """Rank 0's store, bound at once: the port is held from here until the group closes. A
    check now and a bind after the other ranks load lost the port in between to an outgoing
    connection (ports above 32768 are also the system's ephemeral range)."""
    try:
        return dist.TCPStore("127.0.0.1", port, size, is_master=True, timeout=COLLECTIVE_TIMEOUT, wait_for_workers=False)
    except RuntimeError as exc:  # torch's DistNetworkError
        why = "address already in use" if "EADDRINUSE" in str(exc) else str(exc).splitlines()[0]
        raise RuntimeError(f"--tp-size > 1 meets its ranks on port {port} (--port + 1), which is in use "
                           f"({why}): free it or pick another --port") from None


class TensorParallel:
    """This process's place in the group, and the collectives the sharded layers call."""

    def __init__(self, rank: int, size: int, port: int, device: torch.device, store: dist.Store | None = None) -> None:
        """`store`: rank 0's (bind_store); the other ranks connect to it at `port`."""
        self.rank, self.size, self.device = rank, size, device
        backend = "nccl" if device.type == "cuda" else "gloo"
        if store is None:
            store = dist.TCPStore("127.0.0.1", port, size, is_master=False, timeout=COLLECTIVE_TIMEOUT)
        dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=COLLECTIVE_TIMEOUT)
        logger.info("tensor parallel rank %d of %d (%s) on %s", rank, size, backend, device)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(x)
        return x

    def all_gather_last(self, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=-1)

    def broadcast(self, values: torch.Tensor | None, n: int) -> torch.Tensor:
        """Rank 0's `n` int64 values (input ids, the pool's size) on every rank."""
        out = values.to(self.device).contiguous() if values is not None else torch.empty(n, dtype=torch.int64, device=self.device)
        dist.broadcast(out, src=0)
        return out

    def gather_heads(self, mine: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """KV pages [N, 2, layers, heads, head_dim]: rank 0 gets every rank's slice joined
        along the heads (rank r holds counts[r] heads); a worker sends rank 0 its own."""
        if self.rank != 0:
            dist.send(mine.contiguous(), dst=0)
            return mine
        parts = [mine]
        for r in range(1, self.size):
            parts.append(torch.empty((*mine.shape[:3], counts[r], *mine.shape[4:]), dtype=mine.dtype, device=mine.device))
            dist.recv(parts[-1], src=r)
        return torch.cat(parts, dim=3)

    def scatter_heads(self, pages: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """The reverse of gather_heads: rank 0 sends each rank its slice of `pages` and keeps
        its own; a worker receives its slice into `pages` (an empty tensor of its shape)."""
        if self.rank != 0:
            dist.recv(pages, src=0)
            return pages
        slices = pages.to(self.device).split(counts, dim=3)
        for r in range(1, self.size):
            dist.send(slices[r].contiguous(), dst=r)
        return slices[0]

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


@dataclasses.dataclass
class KVCommand:
    """Rank 0 asks the workers for their slices of the KV pages at `slots` (`read`: each sends
    its own) or hands them theirs (`write`: each receives its own); see the module docstring."""

    op: Literal["read", "write"]
    slots: list[int]


def batch_metadata(batch: ForwardBatch) -> ForwardBatch:
    """What a worker needs of a batch, on the host: no ids (broadcast), no sampling values."""
    host = {f: getattr(batch, f).cpu() for f in ("positions", "out_slots", "page_table", "sample_indices")}
    if batch.sampling is None:
        host["sample_indices"] = host["sample_indices"][:0]
    return dataclasses.replace(batch, input_ids=torch.empty(0, dtype=torch.int64), sampling=None, images=[], **host)


class Workers:
    """Ranks 1..size-1 as processes (spawned: CUDA and threads survive only a fresh start),
    and the queues that hand them batches."""

    def __init__(self, settings: Any, model_path: str, dummy: bool, size: int, port: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.ready = ctx.Queue()
        self.inboxes = [ctx.Queue() for _ in range(1, size)]
        # the kernel's parent-death signal follows the thread that started the child: only the
        # main thread lives as long as this process
        die_with_parent = threading.current_thread() is threading.main_thread()
        self.procs = [ctx.Process(target=worker_main, args=(settings, model_path, dummy, rank, size, port,
                                                            self.inboxes[rank - 1], self.ready, die_with_parent),
                                  name=f"minisgl-tp{rank}", daemon=True) for rank in range(1, size)]
        with _main_module_hidden():
            for p in self.procs:
                p.start()

    def wait_ready(self, timeout_s: float = 600.0) -> None:
        """Every worker is about to meet rank 0 (or a worker died: the reason)."""
        waiting = len(self.procs)
        deadline = time.monotonic() + timeout_s
        while waiting:
            try:
                rank, error = self.ready.get(timeout=0.5)
            except queue.Empty:
                dead = [p for p in self.procs if not p.is_alive()]
                if dead:
                    raise RuntimeError(f"tensor-parallel worker {dead[0].name} exited with code {dead[0].exitcode} "
                                       "before joining (see its log above)") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"tensor-parallel workers did not start within {timeout_s:.0f} s") from None
                continue
            if error:
                raise RuntimeError(f"tensor-parallel rank {rank} failed to start: {error}")
            waiting -= 1

    def send(self, batch: ForwardBatch | KVCommand | None) -> None:
        for p, inbox in zip(self.procs, self.inboxes):
            if not p.is_alive():
                raise RuntimeError(_died(p))
            inbox.put(batch)

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        """A step that fails because a rank exited under it says which rank, and how."""
        try:
            yield
        except Exception as exc:
            ended = multiprocessing.connection.wait([p.sentinel for p in self.procs], timeout=EXIT_GRACE_S)
            dead = [p for p in self.procs if p.sentinel in ended]
            if dead:
                dead[0].join(EXIT_GRACE_S)  # the sentinel can fire before the exit status is there to reap
                raise RuntimeError(f"{_died(dead[0])} during a step") from exc
            raise

    def stop(self) -> None:
        for p, inbox in zip(self.procs, self.inboxes):
            if p.is_alive():
                inbox.put(None)
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()


def _died(p: multiprocessing.process.BaseProcess) -> str:
    rank = p.name.removeprefix("minisgl-tp")
    return f"tensor-parallel worker {p.name} died (rank {rank}, process {p.pid}, exit code {p.exitcode})"


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL this worker when rank 0 exits: a stopped or stuck worker
    cannot poll for it, and would hold its memory forever."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    parent = multiprocessing.parent_process()
    if parent is not None and not parent.is_alive():  # it died before the request took
        os._exit(1)


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Spawned workers import only our modules: a script that made an LLM without an
    `if __name__ == "__main__"` guard would otherwise run again in every worker."""
    main = sys.modules.get("__main__")
    spec, file = getattr(main, "__spec__", None), getattr(main, "__file__", None)
    if main is not None:
        main.__spec__ = None
        if file is not None:
            del main.__file__
    try:
        yield
    finally:
        if main is not None:
            main.__spec__ = spec
            if file is not None:
                main.__file__ = file


def worker_main(settings: Any, model_path: str, dummy: bool, rank: int, size: int, port: int,
                inbox: Any, ready: Any, die_with_parent: bool = False) -> None:
    """A worker rank: build this rank's shard, then run every batch rank 0 hands over until it says stop."""
    if die_with_parent:
        _die_with_parent()
    logging.basicConfig(level=getattr(logging, str(settings.log_level).upper(), logging.INFO),
                        format=f"%(asctime)s %(levelname)s tp{rank} %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        from .runner import SglModelRunner

        ready.put((rank, None))
        runner = SglModelRunner(settings, model_path, dummy, tp_rank=rank)
    except Exception as exc:
        ready.put((rank, f"{type(exc).__name__}: {exc}"))
        raise
    parent = multiprocessing.parent_process()
    faults, steps = Faults.from_env(), 0  # tests only (MINISGL_TEST_FAULTS); none otherwise
    try:
        with torch.inference_mode():
            while True:
                try:
                    batch = inbox.get(timeout=1.0)
                except queue.Empty:
                    if parent is not None and not parent.is_alive():
                        break  # rank 0 is gone
                    continue
                if batch is None:
                    break
                if isinstance(batch, KVCommand):
                    runner.shard_kv(batch)
                    continue
                faults.at_rank_step(rank, steps)
                steps += 1
                batch.input_ids = runner.tp.broadcast(None, sum(batch.extend_lens))
                runner.shard_logits(batch)
    finally:
        runner.tp.close()
        os._exit(0)  # no atexit work in a worker: rank 0 owns the group's end
