"""Where each engine replica runs (DP_SIZE, TP_SIZE, ENABLE_MULTI_DEVICE).

On CUDA with several visible GPUs and ENABLE_MULTI_DEVICE on, a replica takes TP_SIZE
consecutive GPUs: DP_SIZE=1 means as many replicas as groups fit, a larger DP_SIZE spreads
its replicas over the groups in turn (with TP_SIZE > 1, DP_SIZE x TP_SIZE must fit the
visible GPUs, else the layout is refused with the numbers). Each engine process sees only
its GPUs (CUDA_VISIBLE_DEVICES), so inside it rank r is always cuda:r. Elsewhere (CPU, MPS,
one GPU, or ENABLE_MULTI_DEVICE=0) there are DP_SIZE replicas that share the one device,
which is how several replicas are tested on a CPU machine. The ranks of replica i meet on
--port + 1 + i x TP_SIZE (MINISGL_TP_PORT, for its engine process alone)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from minisgl.cpu_threads import engine_process_env, plan_threads, usable_cpus
from minisgl.settings import Settings

log = logging.getLogger("minisgl.server")


@dataclass(frozen=True)
class ReplicaPlacement:
    index: int
    device: str  # for people: "cpu", "auto", "cuda (GPU 3)"
    env: dict[str, str] = field(default_factory=dict)  # for the engine process only


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as CUDA_VISIBLE_DEVICES entries. torch is
    imported only where an NVIDIA driver exists, so CPU servers stay light."""
    if not Path("/proc/driver/nvidia").exists() and not Path("/dev/nvidia0").exists():
        return []
    try:
        import torch

        count = torch.cuda.device_count()  # NVML-based: creates no CUDA context here
    except Exception as exc:  # a broken driver: run as if there were no GPU
        log.warning("cannot count CUDA devices: %s", exc)
        return []
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


class LayoutError(ValueError):
    """DP_SIZE x TP_SIZE does not fit the visible GPUs."""


def _tp_env(settings: Settings, replica: int) -> dict[str, str]:
    if settings.tp_size == 1:
        return {}
    return {"MINISGL_TP_PORT": str(settings.port + 1 + replica * settings.tp_size)}


def plan_replicas(settings: Settings, gpus: list[str] | None = None) -> list[ReplicaPlacement]:
    """One placement per replica to start. `gpus` defaults to `visible_gpus()`."""
    tp = settings.tp_size
    if settings.distributed_executor == "ray":  # Ray places each replica and gives it its GPUs
        return [ReplicaPlacement(i, "ray", _tp_env(settings, i)) for i in range(settings.dp_size)]
    if settings.device in ("auto", "cuda") and settings.enable_multi_device:
        gpus = visible_gpus() if gpus is None else gpus
        if len(gpus) > 1 or (tp > 1 and gpus):
            groups = [gpus[i : i + tp] for i in range(0, len(gpus) - tp + 1, tp)]
            count = len(groups) if settings.dp_size == 1 else settings.dp_size
            if not groups or (tp > 1 and count * tp > len(gpus)):
                raise LayoutError(f"--dp-size {count or 1} x --tp-size {tp} needs {(count or 1) * tp} GPUs; "
                                  f"{len(gpus)} visible ({', '.join(gpus)}): lower --dp-size or --tp-size, or set "
                                  "CUDA_VISIBLE_DEVICES")
            placements = []
            for i in range(count):
                group = groups[i % len(groups)]
                where = f"cuda (GPU {group[0]})" if tp == 1 else f"cuda (GPUs {', '.join(group)})"
                placements.append(ReplicaPlacement(i, where, {"CUDA_VISIBLE_DEVICES": ",".join(group), **_tp_env(settings, i)}))
            return placements
    return [ReplicaPlacement(i, settings.device, {**_tp_env(settings, i), **_thread_env(settings, i)})
            for i in range(settings.dp_size)]


def _thread_env(settings: Settings, replica: int) -> dict[str, str]:
    """Replicas sharing this host's CPU split its cores, and the server's front end (this
    process and its tokenizer workers) is counted in (minisgl.cpu_threads)."""
    plan = plan_threads(cpus=usable_cpus(), replicas=settings.dp_size, replica=replica,
                        front_end=1 + settings.num_tokenizer, tp_size=settings.tp_size,
                        cpu_threads=settings.cpu_threads, cpu_set=settings.cpu_set)
    return engine_process_env(plan)


def describe(placements: list[ReplicaPlacement]) -> str:
    return ", ".join(f"replica {p.index} on {p.device}" for p in placements)
