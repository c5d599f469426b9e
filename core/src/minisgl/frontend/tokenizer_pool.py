"""Tokenization off the event loop: `--num-tokenizer N` worker processes, as in sglang and
mini-sglang, or (N = 0) a thread of the server process.

Chat templates and tokenization of long prompts take milliseconds to seconds of CPU; on
the event loop they would stall every other stream. Jobs are the plain functions of
tokenizer.py (`encode_prompts`, `encode_chat`), so a worker runs exactly what the server
process would, and a RequestError raised there reaches the caller as itself.

A worker that dies (killed, out of memory) breaks the whole process pool: the pool is then
replaced by a fresh one and the job runs once more there (jobs are pure functions of their
arguments); a job that breaks the new pool too fails with an INTERNAL error, so one request
that kills workers cannot keep the others waiting."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .errors import ErrorKind, RequestError
from .tokenizer import Tokenizer

log = logging.getLogger("minisgl.frontend")

_worker_tokenizer: Tokenizer | None = None


def _init_worker(model_path: str, trust_remote_code: bool) -> None:
    global _worker_tokenizer
    # a Ctrl-C reaches the whole process group: the server drains, then shuts the workers down
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_tokenizer = Tokenizer(model_path, trust_remote_code)


def _run_in_worker(job: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    assert _worker_tokenizer is not None
    return job(_worker_tokenizer, *args, **kwargs)


class TokenizerPool:
    def __init__(self, tokenizer: Tokenizer, model_path: str, *, workers: int = 0, trust_remote_code: bool = False) -> None:
        self.tokenizer = tokenizer  # the server process's own: detokenizing, logprobs' token text
        self.workers = workers
        self.model_path, self.trust_remote_code = model_path, trust_remote_code
        self.restarts = 0  # process pools built to replace a broken one
        self._executor: ProcessPoolExecutor | None = self._new_executor() if workers else None

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(self.model_path, self.trust_remote_code))

    async def start(self) -> None:
        """Start the workers and wait until each has loaded the tokenizer."""
        if self._executor is None:
            log.info("tokenization in the server process, off the event loop (--num-tokenizer 0)")
            return
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._executor, _run_in_worker, Tokenizer.encode, ("warm",), {})
                               for _ in range(self.workers)))
        log.info("%d tokenizer worker process(es) ready (--num-tokenizer)", self.workers)

    async def run(self, job: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`job(tokenizer, *args, **kwargs)` in a worker (or a thread)."""
        if self._executor is None:
            return await asyncio.to_thread(job, self.tokenizer, *args, **kwargs)
        loop = asyncio.get_running_loop()
        for attempt in range(2):
            executor = self._executor
            if executor is None:
                break  # shut down meanwhile
            try:
                return await loop.run_in_executor(executor, _run_in_worker, job, args, kwargs)
            except BrokenProcessPool:
                if self._executor is executor:  # the first job to see it replaces the pool
                    log.error("a tokenizer worker process died; starting %d new one(s)", self.workers)
                    executor.shutdown(wait=False, cancel_futures=True)
                    self._executor = self._new_executor()
                    self.restarts += 1
                if attempt:
                    break
        raise RequestError(ErrorKind.INTERNAL, "a tokenizer worker process died while it tokenized this request")

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
