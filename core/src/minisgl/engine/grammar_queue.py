"""Constrained requests wait here while their grammar compiles, off the engine loop.

The grammar backend (--grammar-backend over the model's tokenizer) is built with the first
constrained request, on the compile thread too: building its view of the tokenizer takes
seconds. Each request's grammar is compiled once; the matcher then goes with the request
into the scheduler.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from ..grammar import GrammarBackend
from .grammar_masks import GrammarMasks
from .messages import EngineRequest


@dataclass
class Compiling:
    request: EngineRequest
    warm_only: bool
    field: str  # the sampling field that carries the constraint: json_schema, regex, ebnf
    matcher: Future  # the grammar backend's matcher for the request's constraint


class GrammarQueue:
    def __init__(self, make_backend: Callable[[], GrammarBackend], masks: GrammarMasks) -> None:
        self._make_backend = make_backend
        self._masks = masks
        self._pool: ThreadPoolExecutor | None = None
        self.compiling: list[Compiling] = []

    @property
    def backend(self) -> GrammarBackend:
        if self._masks.backend is None:
            self._masks.backend = self._make_backend()
        return self._masks.backend

    def submit(self, request: EngineRequest, warm_only: bool, constraint: tuple[str, str]) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="grammar-compile")
        field, source = constraint
        future = self._pool.submit(lambda: self.backend.matcher(field, source))
        self.compiling.append(Compiling(request, warm_only, field, future))

    def ready(self) -> list[Compiling]:
        """The requests whose compile has ended (their `matcher` holds the matcher or the error)."""
        done = [c for c in self.compiling if c.matcher.done()]
        if done:
            self.compiling = [c for c in self.compiling if not c.matcher.done()]
        return done

    def find(self, rid: str) -> Compiling | None:
        return next((c for c in self.compiling if c.request.rid == rid), None)

    def cancel(self, rid: str) -> Compiling | None:
        """Drop a request whose grammar is still compiling (it holds nothing else)."""
        found = self.find(rid)
        if found is not None:
            self.compiling.remove(found)
        return found

    def wait(self, timeout: float) -> None:
        """Wait a moment for one compile to end (the engine has nothing else to do)."""
        wait([c.matcher for c in self.compiling], timeout=timeout, return_when=FIRST_COMPLETED)

    def __bool__(self) -> bool:
        return bool(self.compiling)

