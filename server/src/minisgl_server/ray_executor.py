"""--distributed-executor ray: engine replicas as Ray actors, on the cluster RAY_ADDRESS names
(or on a local one started here, with a log line saying so).

Each replica is one actor in a placement group of one bundle (a CPU and its TP_SIZE GPUs,
strategy STRICT_PACK), so the tensor-parallel ranks the engine starts as its own processes
share the actor's node and the GPUs Ray gave it. The actor runs the same engine loop as a
local engine process (run_engine_process) and connects back to the server's sockets over
tcp on the server's node address: the ZeroMQ protocol and the dispatch policies are the
local ones. Ray restarts an actor whose process dies (max_restarts = ENGINE_RESTART_LIMIT);
the pool's supervisor then runs the engine loop on the restarted actor with fresh sockets,
re-warms it and puts it back in rotation, exactly as it does for a local process, so the
restart policy (limit, backoff, re-warm) has one owner."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import zmq
import zmq.asyncio

from minisgl.control.security import curve_dir
from minisgl.ipc.endpoints import EndpointAllocator, ReplicaEndpoints
from minisgl.ipc.engine_host import HostFactory
from minisgl.settings import Settings

log = logging.getLogger("minisgl.server")

PLACEMENT_TIMEOUT_S = 120.0


class ExecutorError(RuntimeError):
    """Ray is missing, unreachable, or cannot place a replica."""


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ExecutorError("--distributed-executor ray needs Ray: pip install 'minisgl-server[ray]'") from None
    return ray


class EngineActor:
    """The Ray actor one replica's engine runs in (decorated with ray.remote at first use)."""

    def where(self) -> tuple[str, int]:
        """This actor's node address and process id."""
        import ray

        return ray.util.get_node_ip_address(), os.getpid()

    def serve(self, settings: Settings, replica: int, endpoints: ReplicaEndpoints) -> None:
        from minisgl.ipc.engine_process import run_engine_process

        run_engine_process(settings, replica, endpoints)


class RayExecutor:
    """The server's handle on the cluster: one actor (and placement group) per replica."""

    def __init__(self, settings: Settings) -> None:
        ray = _ray()
        self.settings = settings
        address = os.environ.get("RAY_ADDRESS") or None
        self._started_cluster = False
        if not ray.is_initialized():
            try:
                ray.init(address=address, namespace="minisgl", include_dashboard=False, log_to_driver=True)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ExecutorError(f"cannot reach the Ray cluster at RAY_ADDRESS={address}: {exc}") from None
            self._started_cluster = address is None
        resources = ray.cluster_resources()
        if address is None:
            log.info("Ray: no RAY_ADDRESS set, started a local Ray cluster (%d CPUs, %d GPUs)",
                     resources.get("CPU", 0), resources.get("GPU", 0))
        else:
            log.info("Ray: joined the cluster at %s (%d nodes, %d CPUs, %d GPUs)", address,
                     len([n for n in ray.nodes() if n.get("Alive")]), resources.get("CPU", 0), resources.get("GPU", 0))
        self.node_ip = ray.util.get_node_ip_address()  # where engines reach the server's sockets
        self.gpus_per_replica = settings.tp_size if self._wants_gpus(resources) else 0
        # what one replica's placement group holds
        self.bundle = {"CPU": 1.0, **({"GPU": float(self.gpus_per_replica)} if self.gpus_per_replica else {})}
        self._actor_class = ray.remote(EngineActor)
        self._actors: dict[int, tuple[Any, Any]] = {}  # replica -> (actor, placement group)
        self._ctx: zmq.asyncio.Context | None = None
        self._auth: Any = None

    def data_path(self) -> tuple[zmq.asyncio.Context, EndpointAllocator]:
        """The pool's sockets: tcp on this node's address. With ZMQ_CONTROL_CURVE_DIR (the
        control plane's keys) every data socket is CURVE-encrypted and admits only engines
        that hold the client key; one ZAP handler serves both sockets of a replica, since
        the asyncio context shadows the process's global one that the request sockets use."""
        root = curve_dir()
        if root is None:
            self._ctx = zmq.asyncio.Context()
            return self._ctx, EndpointAllocator("tcp", self.node_ip)
        from zmq.auth.thread import ThreadAuthenticator

        shared = zmq.Context.instance()
        self._auth = ThreadAuthenticator(shared)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(root / "clients"))
        log.info("Ray: engines connect over CURVE (keys in %s)", root)
        return zmq.asyncio.Context.shadow(shared.underlying), EndpointAllocator("tcp", self.node_ip, curve_root=root)

    def _wants_gpus(self, resources: Mapping[str, float]) -> bool:
        return self.settings.device == "cuda" or (self.settings.device == "auto" and resources.get("GPU", 0) > 0)

    def host_factory(self) -> HostFactory:
        return lambda settings, replica, endpoints, env: RayActorHost(self, settings, replica, endpoints, env)

    def actor(self, replica: int, env: Mapping[str, str]) -> tuple[Any, Any]:
        """The replica's actor and placement group, made on first use (and again after Ray
        gave up restarting the last one)."""
        if replica not in self._actors:
            from ray.util.placement_group import placement_group
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            group = placement_group([self.bundle], strategy="STRICT_PACK", name=f"minisgl-replica-{replica}-{os.getpid()}")
            actor = self._actor_class.options(
                num_cpus=1, num_gpus=self.gpus_per_replica,
                max_restarts=self.settings.engine_restart_limit,
                scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0),
                runtime_env={"env_vars": dict(env)} if env else None,
            ).remote()
            self._actors[replica] = (actor, group)
        return self._actors[replica]

    def forget(self, replica: int) -> None:
        """Drop an actor Ray will not bring back; the next start makes a new one."""
        entry = self._actors.pop(replica, None)
        if entry is not None:
            self._remove(*entry)

    def _remove(self, actor: Any, group: Any) -> None:
        ray = _ray()
        from ray.util.placement_group import remove_placement_group

        try:
            ray.kill(actor, no_restart=True)
        except Exception as exc:  # already gone
            log.debug("Ray: kill: %s", exc)
        try:
            remove_placement_group(group)
        except Exception as exc:
            log.debug("Ray: remove placement group: %s", exc)

    def close(self) -> None:
        for entry in self._actors.values():
            self._remove(*entry)
        self._actors.clear()
        if self._auth is not None:
            self._auth.stop()  # the shared context stays: it is the process's
        elif self._ctx is not None:
            self._ctx.term()
        if self._started_cluster:
            _ray().shutdown()


class RayActorHost:
    """EngineHost for EngineClient: the engine loop as a task on the replica's actor."""

    def __init__(self, executor: RayExecutor, settings: Settings, replica: int, endpoints: ReplicaEndpoints,
                 env: Mapping[str, str]) -> None:
        self.executor, self.settings, self.replica, self.endpoints = executor, settings, replica, endpoints
        self.env = dict(env)
        self.node = "ray (placing)"
        self.remote = True
        self.pid: int | None = None  # the actor's process, once placed
        self._task: asyncio.Task[None] | None = None
        self._actor: Any = None

    def start(self, on_exit: Callable[[str], None]) -> None:
        self._actor, group = self.executor.actor(self.replica, self.env)
        self._task = asyncio.get_running_loop().create_task(self._run(group, on_exit), name=f"ray-engine-{self.replica}")

    async def _run(self, group: Any, on_exit: Callable[[str], None]) -> None:
        ray = _ray()
        try:
            await asyncio.wait_for(group.ready(), PLACEMENT_TIMEOUT_S)
        except asyncio.TimeoutError:
            self.executor.forget(self.replica)
            on_exit(f"Ray could not place replica {self.replica} within {PLACEMENT_TIMEOUT_S:.0f} s: it needs "
                    f"{self.executor.bundle} on one node; free in the cluster: {ray.available_resources()}")
            return
        deadline = asyncio.get_running_loop().time() + PLACEMENT_TIMEOUT_S
        while True:
            try:
                address, self.pid = await self._actor.where.remote()
                break
            except ray.exceptions.ActorUnavailableError as exc:  # Ray is restarting it: wait
                if asyncio.get_running_loop().time() > deadline:
                    on_exit(f"Ray actor of replica {self.replica} did not come back: {_first_line(exc)}")
                    return
                await asyncio.sleep(0.5)
            except ray.exceptions.RayActorError as exc:  # out of restarts: the next start makes a new one
                self.executor.forget(self.replica)
                on_exit(f"Ray actor of replica {self.replica} is dead: {_first_line(exc)}")
                return
        self.node = f"ray node {address}"
        try:
            await self._actor.serve.remote(self.settings, self.replica, self.endpoints)
        except ray.exceptions.RayActorError as exc:
            on_exit(f"Ray actor of replica {self.replica} (process {self.pid}) on {self.node} died: {_first_line(exc)}")
        except ray.exceptions.RayError as exc:
            on_exit(f"engine on {self.node} failed: {_first_line(exc)}")
        else:
            on_exit(f"engine loop on {self.node} ended")

    def is_alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def terminate(self) -> None:
        if self._actor is not None:
            self.executor.forget(self.replica)

    def kill(self) -> None:
        self.terminate()  # forgetting the actor kills it

    def detach(self) -> None:
        if self._task is not None and asyncio.current_task() is not self._task:
            self._task.cancel()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
