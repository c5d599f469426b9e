"""insert_prefix without waiting: a warm call queues one prefill-only request per prefix
and returns a PendingCall that the step which finishes the last of them resolves. The
scheduler runs warm requests behind user requests (admission.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .request import Req

log = logging.getLogger("minisgl.engine")


class PendingCall:
    """The answer to an engine call that a later step() gives (warm_async). Callbacks run
    once, in the thread that steps the engine, outside the engine's lock."""

    def __init__(self) -> None:
        self.done = False
        self.result: Any = None
        self.error: str | None = None
        self._callbacks: list[Callable[[PendingCall], None]] = []

    def add_done_callback(self, fn: Callable[[PendingCall], None]) -> None:
        if self.done:
            fn(self)
        else:
            self._callbacks.append(fn)

    def resolve(self, result: Any = None, error: str | None = None) -> None:
        if self.done:
            return
        self.done, self.result, self.error = True, result, error
        callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn(self)
            except Exception:  # one callback's bug must not stop the engine loop
                log.exception("engine call callback failed")


class WarmJobs:
    """The warm calls under way: each call's prefill-only requests and the PendingCall they answer."""

    def __init__(self) -> None:
        self._jobs: list[tuple[list[Req], PendingCall]] = []

    def start(self, reqs: list[Req]) -> PendingCall:
        pending = PendingCall()
        if reqs:
            self._jobs.append((reqs, pending))
        else:
            pending.resolve(0)
        return pending

    def finished(self) -> list[tuple[PendingCall, int]]:
        """The calls whose requests have all finished, with the tokens they added to the cache."""
        done = [(reqs, p) for reqs, p in self._jobs if all(r.finished_reason is not None for r in reqs)]
        if done:
            self._jobs = [job for job in self._jobs if job not in done]
        return [(p, sum(r.warm_tokens for r in reqs)) for reqs, p in done]

    def __bool__(self) -> bool:
        return bool(self._jobs)
