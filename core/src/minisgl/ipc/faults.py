"""Faults injected into an engine process, for tests only: nothing but a test sets
MINISGL_TEST_FAULTS, and without it this module does nothing.

MINISGL_TEST_FAULTS is a comma-separated list of:
- `load_raise`: the engine fails while it loads (as a runner that cannot load would)
- `step_raise_after=N`: the engine step after N finished steps raises (a failing forward)
- `step_hang_after=N`: the engine step after N finished steps never returns (a hung forward)
- `step_sleep_ms=N`: every engine step that has work takes N ms longer (a slow device)
- `grammar_raise`: compiling a request's grammar raises an unexpected error
- `tp_rank_exit=K:N`: tensor-parallel rank K (a worker, K >= 1) exits with code
  RANK_EXIT_CODE when handed the batch after N finished steps, as rank 0 enters the step's
  collectives (a rank that dies mid-step)
- `once=PATH`: only the first engine process (the one that creates PATH) gets the faults:
  a restarted engine serves normally
- `skip_first=PATH`: every engine process but the first gets the faults: a restart fails
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

ENV = "MINISGL_TEST_FAULTS"
RANK_EXIT_CODE = 3  # what tp_rank_exit's rank exits with, for tests to find in the error


class InjectedFault(RuntimeError):
    """The error an injected fault raises."""


@dataclass
class Faults:
    load_raise: bool = False
    step_raise_after: int | None = None
    step_hang_after: int | None = None
    step_sleep_ms: int = 0
    grammar_raise: bool = False
    tp_rank_exit: tuple[int, int] | None = None  # (rank, steps)

    @classmethod
    def from_env(cls) -> Faults:
        spec = os.environ.get(ENV, "").strip()
        faults = cls()
        for item in filter(None, (part.strip() for part in spec.split(","))):
            key, _, value = item.partition("=")
            if key in ("once", "skip_first"):
                if _first_to_create(value) != (key == "once"):
                    return cls()
            elif key in ("load_raise", "grammar_raise"):
                setattr(faults, key, True)
            elif key in ("step_raise_after", "step_hang_after", "step_sleep_ms"):
                setattr(faults, key, int(value))
            elif key == "tp_rank_exit":
                rank, _, steps = value.partition(":")
                faults.tp_rank_exit = (int(rank), int(steps))
            else:
                raise ValueError(f"{ENV}: unknown fault {item!r}")
        return faults

    def hand_down(self) -> None:
        """The rank processes this engine starts get its rank fault, not a fresh draw of
        `once`/`skip_first` (which this process already made)."""
        if self.tp_rank_exit is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = "tp_rank_exit={}:{}".format(*self.tp_rank_exit)

    def at_rank_step(self, rank: int, steps: int) -> None:
        """Called by a tensor-parallel worker as it takes a batch, after `steps` finished."""
        if self.tp_rank_exit == (rank, steps):
            os._exit(RANK_EXIT_CODE)

    def at_load(self) -> None:
        if self.load_raise:
            raise InjectedFault("injected fault: the runner failed to load")

    def install(self, engine: Any) -> None:
        """Wrap the loaded engine's step and grammar backend as the faults ask."""
        if self.step_raise_after is not None or self.step_hang_after is not None or self.step_sleep_ms:
            step, done = engine.step, [0]

            def faulty_step() -> Any:
                if self.step_sleep_ms and engine.has_work():
                    threading.Event().wait(self.step_sleep_ms / 1000)
                if self.step_raise_after is not None and done[0] >= self.step_raise_after:
                    raise InjectedFault(f"injected fault: the forward failed after {done[0]} steps")
                if self.step_hang_after is not None and done[0] >= self.step_hang_after:
                    threading.Event().wait()  # forever: only a kill ends it
                done[0] += 1
                return step()

            engine.step = faulty_step
        if self.grammar_raise:
            engine._grammar_factory = lambda *args: _RaisingGrammars()


def _first_to_create(path: str) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


class _RaisingGrammars:
    def check(self, field: str, source: str) -> None:
        raise InjectedFault("injected fault: grammar compile failed")

    def matcher(self, field: str, source: str) -> Any:
        raise InjectedFault("injected fault: grammar compile failed")
