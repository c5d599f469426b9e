"""The engine side of the server: a pool of engine replicas (one engine process each,
placed by replica_layout), a dispatch policy choosing one per request, and the inflight
caps (MAX_INFLIGHT_TOTAL, MAX_INFLIGHT_PER_ENGINE) that turn overload into 429s.

A replica that dies is taken out of rotation: its in-flight requests get an error, its
PrefixTracker is forgotten, and the others keep serving. The pool is unavailable (503)
only when no replica is left.

Supervision: the pool then restarts the dead replica's engine (`_supervise`) after an
exponential backoff (ENGINE_RESTART_BACKOFF_S, doubling per failure in a row, capped at
RESTART_BACKOFF_MAX_S), up to ENGINE_RESTART_LIMIT failures in a row (0: never restart).
The new process loads, warms up, gets WARM_PREFIXES again (`on_restart`), and only then
rejoins the rotation. Each attempt is logged; /health shows each replica's state
(starting | ready | restarting | dead) and restart count.

A stuck engine (no step finished within WATCHDOG_TIMEOUT seconds while it has work: the
client's watchdog, minisgl.ipc.client) is killed and counts as a death like any other.

Shutdown (SIGTERM/SIGINT, ServerState.shutdown): `drain` is the one place that stops
admission and waits for in-flight requests, for the control plane's `drain` command as for
a shutdown; `shutting_down` also stops restarts and refuses `resume`; `end_inflight` then
ends what the drain timeout cut short."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import zmq.asyncio

from minisgl.dispatch import (
    DispatchPolicyError,
    PrefixTracker,
    choose_replica,
    load_dispatch_policy,
)
from minisgl.engine.messages import EngineOutput, EngineRequest
from minisgl.frontend.errors import ErrorKind, RequestError
from minisgl.ipc.client import EngineClient, EngineUnavailable
from minisgl.ipc.endpoints import EndpointAllocator
from minisgl.ipc.protocol import EngineReady
from minisgl.plugins import PluginError, Registry
from minisgl.settings import Settings

from .ray_executor import RayExecutor
from .replica import Replica
from .replica_layout import ReplicaPlacement, describe, plan_replicas

log = logging.getLogger("minisgl.server")

LOAD_REFRESH_S = 1.0  # how often policies' view of engine load (running, waiting, KV) is refreshed
RESTART_BACKOFF_MAX_S = 60.0  # the longest wait before a restart attempt
# What resets the restart count: a replica whose engine served this long before it died
# counts as healthy again, so its death is failure 1 (restart after the first backoff),
# not one more in a row. A crash loop dies while loading or within seconds of serving and
# reaches ENGINE_RESTART_LIMIT; an engine that serves for a minute between deaths (a rare
# kernel fault, an OOM kill under a burst) is worth restarting every time.
RESTART_RESET_AFTER_S = 60.0


class SchedulerError(ValueError):
    """SCHEDULER_MODE / --scheduler / set_scheduler named a policy that cannot be used."""


class Lease:
    """`count` inflight slots on one replica, held for one HTTP request, and its line to
    that replica's engine: the engine requests sent on it and the queue of their outputs."""

    def __init__(self, replica: Replica, count: int, inflight_before: int) -> None:
        self.replica = replica
        self.client = replica.client
        self.count = count
        self.inflight_before = inflight_before  # the pool's inflight total when admitted
        self.outputs: asyncio.Queue[EngineOutput] = asyncio.Queue()
        self.sent: set[str] = set()  # rids of the engine requests sent (the ones it may abort)
        self.released = False

    def submit(self, request: EngineRequest) -> None:
        self.client.submit(request, self.outputs)
        self.sent.add(request.rid)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.replica.inflight -= self.count


class EnginePool:
    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self.placements: list[ReplicaPlacement] = plan_replicas(settings)
        self.executor = RayExecutor(settings) if settings.distributed_executor == "ray" else None
        if self.executor is None:
            self.ctx, self.endpoints = zmq.asyncio.Context(), EndpointAllocator()
        else:  # engines on other hosts connect to the server's node address over tcp
            self.ctx, self.endpoints = self.executor.data_path()
        self.replicas: list[Replica] = []
        self.state = "created"  # created | starting | ready | draining | failed | stopped
        self.policy_name, self.policy = self._make_policy(settings.scheduler)
        self.ready_infos: list[EngineReady] = []
        self.adaptive_downscaled_total = 0  # engine requests whose max_new_tokens was scaled down
        self._on_death: Callable[[EngineClient], None] | None = None
        self._on_restart: Callable[[Replica], Awaitable[None]] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._supervisors: dict[int, asyncio.Task[None]] = {}  # by replica index, while restarting
        self.shutting_down = False  # SIGTERM/SIGINT: no restarts, no resume
        self._end_drain = asyncio.Event()  # set: a running drain stops waiting now

    # ---- dispatch policy ---------------------------------------------------------------
    def _make_policy(self, name: str) -> tuple[str, Any]:
        try:
            return name, load_dispatch_policy(name, self.registry, self.settings)
        except (PluginError, DispatchPolicyError) as exc:
            raise SchedulerError(str(exc)) from None

    def set_policy(self, name: str) -> dict[str, Any]:
        previous = self.policy_name
        self.policy_name, self.policy = self._make_policy(name)
        log.info("dispatch policy: %s -> %s", previous, self.policy_name)
        return {"previous": previous, "scheduler": self.policy_name}

    # ---- lifecycle -------------------------------------------------------------------
    def _new_client(self, placement: ReplicaPlacement, generation: int = 0) -> EngineClient:
        return EngineClient(
            self.settings, placement.index, self.endpoints.for_replica(placement.index, generation), self.ctx,
            on_death=self._replica_died, env=placement.env,
            curve_server_keys=self.endpoints.server_keys, watchdog_timeout=self.settings.watchdog_timeout,
            **({"host": self.executor.host_factory()} if self.executor else {}),
        )

    async def start(
        self,
        on_death: Callable[[EngineClient], None] | None = None,
        on_restart: Callable[[Replica], Awaitable[None]] | None = None,
    ) -> list[EngineReady]:
        """Start every replica (each loads and warms up its model) and wait for all.
        `on_restart(replica)` runs when a restarted engine is up, before it rejoins the
        rotation (the server re-warms WARM_PREFIXES there)."""
        self.state = "starting"
        self._on_death = on_death
        self._on_restart = on_restart
        log.info("engine pool: %d replica(s): %s", len(self.placements), describe(self.placements))
        for placement in self.placements:
            self.replicas.append(Replica(self._new_client(placement), placement, tracker_tokens=self._tracker_tokens()))
        try:
            self.ready_infos = list(await asyncio.gather(*(r.client.start() for r in self.replicas)))
        except BaseException:
            self.state = "failed"
            raise
        await self.refresh_load()
        for r in self.replicas:
            self._size_tracker(r)
            r.ready_since = time.monotonic()
        self.state = "ready"
        self._refresher = asyncio.create_task(self._refresh_forever(), name="pool-load-refresh")
        return self.ready_infos

    def _tracker_tokens(self, kv_tokens: int = 0) -> int:
        """The engine's prefix-cache budget (PREFIX_CACHE_TOKEN_BUDGET; 0 keeps no finished
        prefix, so the tracker remembers as little as it can; unset: the KV pool), within
        its KV pool when known."""
        budget = self.settings.prefix_cache_token_budget
        if budget is None:
            return kv_tokens or 1  # sized from the pool once the engine reports it
        budget = max(1, budget)
        return min(kv_tokens, budget) if kv_tokens else budget

    def _size_tracker(self, replica: Replica) -> None:
        """The tracker remembers at most what the replica's KV pool can hold, the tier
        tracker what its host or disk tier can (kept across a restart: the disk outlives it)."""
        kv = int(replica.engine_metrics.get("kv_total_tokens", 0) or 0)
        replica.tracker = PrefixTracker(max_tokens=self._tracker_tokens(kv))
        tiers = int(replica.engine_metrics.get("hicache_capacity_tokens", 0) or 0)
        if tiers <= 0:
            replica.tier_tracker = None
        elif replica.tier_tracker is None or replica.tier_tracker.max_tokens != tiers:
            replica.tier_tracker = PrefixTracker(max_tokens=tiers)

    def _forget_tiers(self, replica: Replica, *tiers: str) -> None:
        """The replica's `tiers` (host, disk) were emptied: its tier tracker forgets once
        none of its tiers is left holding anything."""
        held = {"host", "disk"} if self.settings.hicache_storage_backend == "file" else {"host"}
        if replica.tier_tracker is not None and held <= set(tiers):
            replica.tier_tracker.clear()

    async def stop(self) -> None:
        self.state = "stopped"
        self.shutting_down = True
        if self._refresher is not None:
            self._refresher.cancel()
        for task in self._supervisors.values():
            task.cancel()
        await asyncio.gather(*self._supervisors.values(), return_exceptions=True)
        await asyncio.gather(*(r.client.stop() for r in self.replicas), return_exceptions=True)
        self.endpoints.close()
        if self.executor is not None:
            self.executor.close()  # it owns the data path's context
        else:
            self.ctx.term()

    def _replica_died(self, client: EngineClient) -> None:
        replica = self.replicas[client.replica]
        if replica.client is not client:
            return  # a process this replica no longer uses
        replica.tracker.clear()
        self._forget_tiers(replica, "host")  # its host memory died with it; its disk files did not
        replica.last_death = client.error
        if replica.index in self._supervisors:
            return  # a restarted engine died while loading: its supervisor sees it and carries on
        left = len(self.alive)
        if left:
            log.error("engine replica %d taken out of rotation (%s); %d replica(s) keep serving",
                      client.replica, client.error, left)
        else:
            log.error("engine replica %d died (%s): no replica is left, requests get 503 until one serves again",
                      client.replica, client.error)
        if self._on_death is not None:
            self._on_death(client)
        if self.state not in ("ready", "draining") or self.shutting_down:
            return  # a failed start fails the server; a stopping server restarts nothing
        # a replica that served RESTART_RESET_AFTER_S before dying starts counting afresh
        if replica.ready_since is not None and time.monotonic() - replica.ready_since >= RESTART_RESET_AFTER_S:
            replica.failures_in_row = 0
        if self._failed_again(replica):
            return
        replica.restarting = True
        self._supervisors[replica.index] = asyncio.get_running_loop().create_task(
            self._supervise(replica), name=f"engine-{replica.index}-supervisor")

    def _failed_again(self, replica: Replica) -> bool:
        """Count one more failure in a row; True (and the replica given up) past the limit."""
        replica.failures_in_row += 1
        if replica.failures_in_row <= self.settings.engine_restart_limit:
            return False
        self._give_up(replica)
        return True

    def _give_up(self, replica: Replica) -> None:
        limit = self.settings.engine_restart_limit
        if limit == 0:
            why = "it is not restarted (ENGINE_RESTART_LIMIT=0)"
        else:
            why = (f"not restarted again: it failed {replica.failures_in_row} times in a row "
                   f"(ENGINE_RESTART_LIMIT={limit})")
        replica.restarting = False
        replica.next_restart_at = None
        replica.given_up = f"engine replica {replica.index} is down: {replica.error}; {why}"
        log.error("%s", replica.given_up)

    async def _supervise(self, replica: Replica) -> None:
        """Restart a dead replica's engine with backoff until it serves again or the limit
        is reached. Runs as one task per dead replica."""
        limit = self.settings.engine_restart_limit
        try:
            while True:
                attempt = replica.failures_in_row
                delay = min(self.settings.engine_restart_backoff_s * 2 ** (attempt - 1), RESTART_BACKOFF_MAX_S)
                log.warning("restarting engine replica %d (attempt %d/%d in %.1fs); it died: %s",
                            replica.index, attempt, limit, delay, replica.error)
                replica.next_restart_at = time.monotonic() + delay
                await asyncio.sleep(delay)
                replica.next_restart_at = None
                if self.shutting_down:
                    return
                await replica.client.stop()  # the dead one: close its sockets
                client = self._new_client(replica.placement, generation=replica.restarts + 1)
                replica.replace_client(client)
                started = time.monotonic()
                try:
                    info = await client.start()
                except EngineUnavailable as exc:
                    if self.shutting_down:
                        return
                    replica.last_death = str(exc)
                    log.error("engine replica %d: restart attempt %d failed: %s", replica.index, attempt, exc)
                    if self._failed_again(replica):
                        return
                    continue
                if await self._rejoin(replica, info, time.monotonic() - started):
                    return
                if self._failed_again(replica):  # died again while re-warming
                    return
        finally:
            self._supervisors.pop(replica.index, None)

    async def _rejoin(self, replica: Replica, info: EngineReady, seconds: float) -> bool:
        """Put a restarted replica back in rotation; False if its engine died meanwhile."""
        if replica.index < len(self.ready_infos):
            self.ready_infos[replica.index] = info
        try:
            replica.record_metrics(await replica.client.call("metrics", timeout=30.0))
        except (EngineUnavailable, asyncio.TimeoutError, RuntimeError) as exc:
            log.warning("engine replica %d: metrics unavailable after restart: %s", replica.index, exc)
        self._size_tracker(replica)
        if self._on_restart is not None and replica.client.alive:
            try:
                await self._on_restart(replica)
            except Exception as exc:  # a cold cache is slower, not broken
                log.warning("engine replica %d: re-warming after restart failed: %s: %s",
                            replica.index, type(exc).__name__, exc)
        if not replica.client.alive or self.shutting_down:
            return self.shutting_down  # died again while re-warming (_replica_died noted why)
        replica.ready_since = time.monotonic()
        replica.restarting = False
        log.info("engine replica %d is back: process %s ready in %.1fs (restart %d), rejoins the rotation",
                 replica.index, replica.client.pid, seconds, replica.restarts)
        return True

    @property
    def clients(self) -> list[EngineClient]:
        return [r.client for r in self.replicas]

    @property
    def alive(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive]

    @property
    def healthy(self) -> bool:
        """Serving: started and at least one replica alive (others may be down: degraded)."""
        return self.state in ("ready", "draining") and bool(self.alive)

    @property
    def degraded(self) -> bool:
        return bool(self.replicas) and len(self.alive) < len(self.replicas)

    @property
    def inflight_total(self) -> int:
        return sum(r.inflight for r in self.replicas)

    @property
    def restarting(self) -> bool:
        return any(r.restarting for r in self.replicas)

    def replica_down_reason(self, replica: Replica) -> str:
        if replica.given_up is not None:
            return replica.given_up
        if replica.restarting:
            when = ""
            if replica.next_restart_at is not None:
                when = f" in {max(0.0, replica.next_restart_at - time.monotonic()):.1f}s"
            return (f"engine replica {replica.index} is restarting (attempt {replica.failures_in_row}/"
                    f"{self.settings.engine_restart_limit}{when}); it died: {replica.error}")
        return f"engine replica {replica.index} is down: {replica.error or replica.state}"

    def unavailable_error(self, reason: str) -> RequestError:
        """Why no request can be admitted, as its kind: NOT_READY (retry soon) while loading,
        draining, stopping or restarting a replica; ENGINE_DEAD when every replica is down
        for good."""
        dead = self.state in ("ready", "failed") and not self.restarting
        return RequestError(ErrorKind.ENGINE_DEAD if dead else ErrorKind.NOT_READY, reason)

    def unavailable_reason(self) -> str:
        if self.state in ("created", "starting"):
            return "the model is still loading; retry when /health answers 200"
        if self.state == "draining":
            if self.shutting_down:
                return ("the server is shutting down (draining): it finishes running requests and admits no new "
                        "ones")
            return "the server is draining: it finishes running requests and admits no new ones"
        if self.state == "stopped":
            return "the server is shutting down"
        dead = [r for r in self.replicas if not r.alive]
        if dead:
            return "; ".join(self.replica_down_reason(r) for r in dead)
        return f"engine pool is {self.state}"

    # ---- engine load, for policies -------------------------------------------------------
    async def refresh_load(self) -> list[dict[str, Any] | None]:
        """Ask every live replica for its metrics; returns them by replica (None: no answer)."""
        live = self.alive
        answers = await asyncio.gather(*(r.client.call("metrics", timeout=5.0) for r in live), return_exceptions=True)
        by_index: dict[int, dict[str, Any]] = {}
        for replica, answer in zip(live, answers, strict=True):
            if isinstance(answer, dict):
                replica.record_metrics(answer)
                by_index[replica.index] = answer
            elif isinstance(answer, TimeoutError):  # busy in a long step (a prefill): the last figures stand
                log.debug("engine replica %d: no metrics within 5 s (busy in a step)", replica.index)
            elif not isinstance(answer, EngineUnavailable):
                log.warning("engine replica %d: metrics unavailable: %s: %s", replica.index, type(answer).__name__,
                            answer)
        return [by_index.get(r.index) for r in self.replicas]

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(LOAD_REFRESH_S)
            try:
                await self.refresh_load()
            except Exception as exc:  # never let the refresher die
                log.warning("engine load refresh failed: %s", exc)

    # ---- admission -------------------------------------------------------------------
    def lease(self, requests: Sequence[EngineRequest]) -> Lease:
        """Reserve one slot per engine request of one HTTP request, all on the replica the
        policy chooses for the first, or raise 503 / 429."""
        if self.state != "ready" or not self.alive:
            raise self.unavailable_error(self.unavailable_reason())
        inflight, count, first = self.inflight_total, len(requests), requests[0]
        cap_total = self.settings.max_inflight_total
        if cap_total and inflight + count > cap_total:
            raise RequestError(ErrorKind.CAPACITY,
                               f"too many requests in flight ({inflight}/{cap_total}, MAX_INFLIGHT_TOTAL); retry later")
        cap_engine = self.settings.max_inflight_per_engine
        candidates = [r.view(cap_engine) for r in self.alive if not cap_engine or r.inflight + count <= cap_engine]
        if not candidates:
            raise RequestError(ErrorKind.CAPACITY,
                               f"every engine replica is at its inflight cap ({cap_engine}, MAX_INFLIGHT_PER_ENGINE); "
                               "retry later")
        try:
            index = choose_replica(self.policy, first, candidates)
        except Exception as exc:  # a faulty policy: say which, do not crash the request handler
            log.error("dispatch policy %r failed: %s: %s", self.policy_name, type(exc).__name__, exc)
            raise RequestError(ErrorKind.INTERNAL, f"dispatch policy {self.policy_name!r} failed: {exc}") from None
        replica = self.replicas[index]
        replica.record_dispatch(count, first.input_ids)
        return Lease(replica, count, inflight)

    # ---- engine calls ----------------------------------------------------------------
    async def call_all(self, method: str, timeout: float = 30.0, **args: Any) -> list[Any]:
        results = await asyncio.gather(*(r.client.call(method, timeout=timeout, **args) for r in self.alive),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        for err in errors:
            if not isinstance(err, EngineUnavailable | asyncio.TimeoutError):
                raise err
        return [r for r in results if not isinstance(r, BaseException)]

    async def warm(self, token_id_lists: list[list[int]], replicas: list[Replica] | None = None) -> list[int]:
        """Prefill each list into every live replica's prefix cache (or into `replicas`,
        e.g. a restarted one before it rejoins); tokens cached per replica."""
        async def one(replica: Replica) -> int:
            cached = int(await replica.client.call("warm", token_id_lists=token_id_lists, timeout=300) or 0)
            replica.warmed_tokens += cached
            for ids in token_id_lists:
                replica.remember(ids)
            return cached

        live = self.alive if replicas is None else replicas
        results = await asyncio.gather(*(one(r) for r in live), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, EngineUnavailable | asyncio.TimeoutError):
                raise result
        return [r if isinstance(r, int) else 0 for r in results]

    async def flush_cache(self, tier: str | None = None) -> dict[str, int]:
        """Empty one cache tier of every live replica (device, host, disk, all; None: device
        and host), and the pool's guess of it; what each tier dropped, summed."""
        dropped: Counter[str] = Counter()
        for replica in self.alive:
            try:
                dropped.update(await replica.client.call("flush_tiers", tier=tier))
            except EngineUnavailable:
                pass
            if tier in (None, "device", "all"):
                replica.tracker.clear()
            if tier != "device":
                self._forget_tiers(replica, *(("host", "disk") if tier == "all" else (tier or "host",)))
        return dict(dropped)

    async def cache_stats(self) -> list[dict[str, Any]]:
        """Each live replica's cache tiers: pages, bytes, hit tokens and hit rate."""
        live = self.alive
        stats = await asyncio.gather(*(r.client.call("cache_stats") for r in live), return_exceptions=True)
        out = []
        for replica, s in zip(live, stats, strict=True):
            if isinstance(s, BaseException):
                if not isinstance(s, EngineUnavailable | asyncio.TimeoutError):
                    raise s
                continue
            out.append({"replica": replica.index, **s})
        return out

    async def drain(self, timeout: float) -> dict[str, Any]:
        """Stop admitting new requests and wait for the running ones to finish (or for a
        `resume`, which ends the wait)."""
        if self.state == "ready":
            self.state = "draining"
            if not self.shutting_down:
                log.info("draining: new requests get 503 and /health says draining until `resume`")
        started = time.monotonic()
        while (self.state == "draining" and self.inflight_total and time.monotonic() - started < timeout
               and not self._end_drain.is_set()):
            await asyncio.sleep(0.05)
        log.info("drained: %d requests still in flight after %.1fs", self.inflight_total, time.monotonic() - started)
        return {"draining": self.state == "draining", "inflight": self.inflight_total,
                "waited_s": round(time.monotonic() - started, 3)}

    def resume(self) -> dict[str, Any]:
        """Undo `drain`: admit requests again."""
        if self.shutting_down:
            raise RuntimeError("cannot resume: the server is shutting down")
        if self.state == "draining":
            self.state = "ready"
            log.info("resumed: admitting requests again")
        elif self.state != "ready":
            raise RuntimeError(f"cannot resume: {self.unavailable_reason()}")
        return {"draining": False, "state": self.state, "inflight": self.inflight_total}

    # ---- shutdown (ServerState.shutdown) -----------------------------------------------
    def begin_shutdown(self) -> None:
        """No more restarts, no `resume`; the next `drain` is the shutdown's."""
        self.shutting_down = True
        for replica in self.replicas:
            if replica.restarting and replica.index in self._supervisors:
                self._supervisors[replica.index].cancel()

    def end_drain(self) -> None:
        """Make a running `drain` stop waiting now (a second SIGTERM/SIGINT)."""
        self._end_drain.set()

    def end_inflight(self, message: str) -> int:
        """End every request still in flight with a NOT_READY error (streams get an error
        event and [DONE], others a JSON error); their engines abort them. Returns how many
        engine requests were ended."""
        return sum(r.client.fail_inflight(message, ErrorKind.NOT_READY) for r in self.replicas)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until every lease is given back (the handlers have their last output)."""
        deadline = time.monotonic() + timeout
        while self.inflight_total and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return not self.inflight_total
