"""The host's CPU threads: one plan for the whole server, and an engine that yields its
cores while other work needs them.

A CPU engine runs torch, oneDNN, MKL and our C decode kernel on one OpenMP pool (torch's
libgomp: the kernel is loaded after torch, so it binds to the same runtime). Every parallel
region of that pool ends at a barrier, so a team of N threads moves at the pace of its
slowest member: when anything else runs on one of its cores (the server process, a
tokenizer worker, a second replica, someone else's job), the whole team waits a scheduler
time slice for that member, hundreds of times a step: beside one busy neighbour a step
took many times the ~2x a fair share of two cores costs (`minisgl bench contention`,
BENCHMARKS.md).

Two parts answer it:
- `plan_threads`: the cores are divided before any engine starts. The server's front end
  (HTTP, tokenization, detokenization; tokenizer workers) keeps cores of its own on hosts
  large enough to spare them; data-parallel replicas split the rest into disjoint CPU sets
  instead of each taking every core. `--cpu-set` narrows what is divided; `--cpu-threads`
  fixes the count and turns the adjustment below off.
- `EngineThreads`: while an engine runs, it compares how busy its cores are with its own CPU
  time (/proc/stat against /proc/self/stat). What others take is not there for its team:
  with other work on its cores it runs fewer threads, down to one (a team of one waits for
  nobody), and returns to the plan when they are free again.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass

log = logging.getLogger("minisgl.threads")

PLAN_ENV = "MINISGL_THREAD_PLAN"  # the server's plan for one engine process (JSON)
# How long an idle OpenMP thread spins before it sleeps: libgomp's default (300,000 spins)
# holds a core after every parallel region that the server process or a neighbour could
# have run on; 10,000 costs a quiet decode step nothing measurable (BENCHMARKS.md). libgomp
# reads it once, when it loads, so engine processes get it at their start (an in-process
# LLM keeps its process's value).
SPIN_ENV = {"GOMP_SPINCOUNT": "10000"}
FRONT_END_SHARE = 4  # the front end keeps at most one core in this many
ADJUST_EVERY_S = 0.5
RAISE_AFTER = 2  # windows in a row with cores to spare before the team grows again


def engine_process_env(plan: ThreadPlan) -> dict[str, str]:
    """The environment an engine process starts with: its plan, and the spin count unless the
    user chose an OpenMP wait policy."""
    chosen = {"GOMP_SPINCOUNT", "OMP_WAIT_POLICY"} & set(os.environ)
    return {PLAN_ENV: plan.to_env(), **({} if chosen else SPIN_ENV)}


def parse_cpu_set(text: str) -> list[int]:
    """`0-3,6` -> [0, 1, 2, 3, 6] (the taskset/cgroup list format)."""
    cpus: set[int] = set()
    try:
        for part in text.replace(" ", "").split(","):
            lo, dash, hi = part.partition("-")
            first = int(lo)
            last = int(hi) if dash else first
            if first < 0 or last < first:
                raise ValueError(part)
            cpus.update(range(first, last + 1))
    except ValueError:
        raise ValueError(f"expected CPU numbers like 0-3,6, got {text!r}") from None
    return sorted(cpus)


def format_cpu_set(cpus: list[int] | tuple[int, ...]) -> str:
    """[0, 1, 2, 3, 6] -> `0-3,6`."""
    runs: list[str] = []
    for cpu in sorted(cpus):
        if runs and cpu == int(runs[-1].rpartition("-")[2]) + 1:
            runs[-1] = f"{runs[-1].partition('-')[0]}-{cpu}"
        else:
            runs.append(str(cpu))
    return ",".join(runs)


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (taskset, cgroup cpusets)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity
        return list(range(os.cpu_count() or 1))


@dataclass(frozen=True)
class ThreadPlan:
    threads: int  # the engine's OpenMP team (torch, oneDNN, MKL, the C kernels)
    cpus: tuple[int, ...] | None  # the CPU set it is pinned to; None: wherever the OS runs it
    fixed: bool  # the user chose the count (--cpu-threads): kept as it is
    reason: str

    def to_env(self) -> str:
        import json

        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> ThreadPlan | None:
        import json

        raw = os.environ.get(PLAN_ENV)
        if not raw:
            return None
        fields = json.loads(raw)
        cpus = fields.pop("cpus")
        return cls(cpus=None if cpus is None else tuple(cpus), **fields)


def plan_threads(*, cpus: list[int], replicas: int = 1, replica: int = 0, front_end: int = 0, tp_size: int = 1,
                 cpu_threads: int = 0, cpu_set: str | None = None) -> ThreadPlan:
    """One engine's share of the host. `cpus`: what this process may use; `front_end`: the
    server's own processes (1 for the HTTP process, plus tokenizer workers; 0 in-process);
    `tp_size`: rank processes that split the engine's share."""
    pool = cpus
    why = [f"{len(pool)} usable cores"]
    if cpu_set:
        wanted = parse_cpu_set(cpu_set)
        pool = [c for c in wanted if c in cpus]
        if not pool:
            raise ValueError(f"--cpu-set {cpu_set}: none of these CPUs is usable here (usable: {format_cpu_set(cpus)})")
        why = [f"--cpu-set {format_cpu_set(pool)}"]
    reserve = min(front_end, len(pool) // FRONT_END_SHARE)
    if reserve:
        why.append(f"{reserve} kept for the server's front end")
    elif front_end:
        why.append(f"the front end shares them (a core of its own from {FRONT_END_SHARE} cores)")
    share = pool[: len(pool) - reserve]
    pinned = bool(cpu_set) or reserve > 0
    threads = len(share)
    if replicas > 1:
        per, extra = divmod(len(share), replicas)
        if per >= 1:  # the first `extra` replicas take one core more
            start = replica * per + min(replica, extra)
            share, pinned = share[start:start + per + (replica < extra)], True
            threads = len(share)
            why.append(f"replica {replica} of {replicas} takes {threads}")
        else:
            threads = 1
            why.append(f"{replicas} replicas share {len(share)} (one thread each)")
    if tp_size > 1:
        threads = max(1, threads // tp_size)
        why.append(f"{tp_size} tensor-parallel ranks split them")
    if cpu_threads:
        threads = cpu_threads
        why.append(f"--cpu-threads {cpu_threads}")
    return ThreadPlan(threads=threads, cpus=tuple(share) if pinned else None, fixed=bool(cpu_threads),
                      reason="; ".join(why))


def _busy_ticks(cpus: set[int] | None) -> int | None:
    """Busy clock ticks of `cpus` (all when None) since boot; None without /proc/stat."""
    try:
        with open("/proc/stat") as fh:
            lines = fh.readlines()
    except OSError:
        return None
    busy = 0
    for line in lines:
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        name, *values = line.split()
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in values[:8])
        busy += user + nice + system + irq + softirq + steal  # steal: the hypervisor gave it away
    return busy


def _own_ticks() -> int:
    """This process's CPU time (every thread) in clock ticks."""
    with open("/proc/self/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


class EngineThreads:
    """Applies a plan to this process and keeps the team at what its cores can give."""

    def __init__(self, plan: ThreadPlan) -> None:
        import torch

        self.plan = plan
        self.threads = plan.threads
        self._torch = torch
        self._before = torch.get_num_threads()
        self._affinity = tuple(usable_cpus())
        self._cpus = set(plan.cpus if plan.cpus is not None else self._affinity)
        self._sample: tuple[float, int, int] | None = None
        self._spare_windows = 0
        self.adapt = plan.threads > 1 and not plan.fixed and _busy_ticks(self._cpus) is not None
        self._hz = os.sysconf("SC_CLK_TCK") if self.adapt else 100

    @classmethod
    def start(cls, device: str, tp_size: int, cpu_threads: int, cpu_set: str) -> EngineThreads:
        """The engine's threads for a runner on `device`: the server's plan from the
        environment, else one of its own."""
        threads = cls(ThreadPlan.from_env() or plan_threads(cpus=usable_cpus(), tp_size=tp_size,
                                                            cpu_threads=cpu_threads, cpu_set=cpu_set))
        if device.split(":")[0] == "cpu":
            threads.apply()
        else:
            threads.host_only(device)
        return threads

    def apply(self) -> None:
        if self.plan.cpus is not None:
            _pin(self.plan.cpus)
        self._torch.set_num_threads(self.threads)
        where = f"on CPUs {format_cpu_set(self.plan.cpus)}" if self.plan.cpus is not None else "unpinned"
        log.info("CPU threads: %d, %s (%s)%s", self.threads, where, self.plan.reason,
                 "; fewer while other work runs on these cores" if self.adapt else "")

    def host_only(self, device: str) -> None:
        """The model runs on an accelerator: torch's host work is a few small tensors a step,
        and idle OpenMP threads spin for milliseconds after each, on the cores the grammar
        backend fills masks on, making its fill several times slower (BENCHMARKS.md). So one
        thread, as vLLM does, unless --cpu-threads or OMP_NUM_THREADS says otherwise."""
        self.adapt = False
        if self.plan.fixed or "OMP_NUM_THREADS" in os.environ or self.threads == 1:
            return
        self.threads = 1
        self._torch.set_num_threads(1)
        log.info("torch host threads -> 1 while a %s engine runs (--cpu-threads or OMP_NUM_THREADS to choose)", device)

    def tick(self) -> None:
        """Once a step: every ADJUST_EVERY_S, size the team to the cores others leave free."""
        if not self.adapt:
            return
        now = time.monotonic()
        if self._sample is not None and now - self._sample[0] < ADJUST_EVERY_S:
            return
        busy, own = _busy_ticks(self._cpus), _own_ticks()
        last, self._sample = self._sample, (now, busy or 0, own)
        if last is None or busy is None:
            return
        others = max(0.0, ((busy - last[1]) - (own - last[2])) / self._hz / (now - last[0]))
        # a core counts as taken once others use more than 0.4 of it
        want = max(1, min(self.plan.threads, math.floor(len(self._cpus) - others + 0.4)))
        if want > self.threads:
            self._spare_windows += 1
            if self._spare_windows < RAISE_AFTER:
                return
        self._spare_windows = 0
        if want != self.threads:
            log.info("CPU threads %d -> %d: other processes use %.1f of %d cores", self.threads, want, others,
                     len(self._cpus))
            self.threads = want
            self._torch.set_num_threads(want)

    def restore(self) -> None:
        if self.plan.cpus is not None:
            _pin(self._affinity)
        self._torch.set_num_threads(self._before)


def _pin(cpus: tuple[int, ...]) -> None:
    """Every thread of this process (affinity is per thread); threads started later inherit it."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:  # ended meanwhile
            pass
