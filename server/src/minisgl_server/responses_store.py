"""Stored responses (`store: true` on POST /v1/responses) in SQLite, so that a restart loses
none: each row is one response object and the conversation items it answered (the earlier
turns' items included, so a chain survives the deletion of a response it grew from).

Rows belong to an owner (a hash of the API key that made them when --api-key is set; one
shared owner otherwise): another owner's response is not found. The table holds at most
RESPONSES_STORE_MAX rows; the oldest go first. Calls run on a worker thread, one at a time,
so the event loop never waits on the disk."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger("minisgl.server")

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    response BLOB NOT NULL,
    items BLOB NOT NULL
)
"""


def default_path() -> str:
    from minisgl.models import cache_dir

    return str(cache_dir() / "responses.sqlite3")


class ResponseStore:
    def __init__(self, path: str | None, max_responses: int) -> None:
        self.path = path or default_path()
        self.max_responses = max_responses
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            if self.path != ":memory:":
                db.execute("PRAGMA journal_mode=WAL")
            db.execute(SCHEMA)
            log.info("stored responses: %s (at most %d)", self.path, self.max_responses)
            self._db = db
        return self._db

    def _run(self, sql: str, args: tuple[object, ...]) -> list[tuple[bytes, ...]]:
        with self._lock:
            return self._connect().execute(sql, args).fetchall()

    def _put(self, owner: str, response_id: str, response: bytes, items: bytes) -> None:
        with self._lock:
            db = self._connect()
            with db:  # one transaction: the new row and the trim
                db.execute("BEGIN")
                db.execute("INSERT OR REPLACE INTO responses (id, owner, response, items) VALUES (?, ?, ?, ?)",
                           (response_id, owner, response, items))
                db.execute("DELETE FROM responses WHERE seq NOT IN "
                           "(SELECT seq FROM responses ORDER BY seq DESC LIMIT ?)", (self.max_responses,))

    async def put(self, owner: str, response_id: str, response: bytes, items: bytes) -> None:
        await asyncio.to_thread(self._put, owner, response_id, response, items)

    async def get(self, owner: str, response_id: str) -> tuple[bytes, bytes] | None:
        """The response object's JSON and its items' JSON, or None (absent, or another owner's)."""
        rows = await asyncio.to_thread(self._run, "SELECT response, items FROM responses WHERE id = ? AND owner = ?",
                                       (response_id, owner))
        return (rows[0][0], rows[0][1]) if rows else None

    async def delete(self, owner: str, response_id: str) -> bool:
        rows = await asyncio.to_thread(self._run, "DELETE FROM responses WHERE id = ? AND owner = ? RETURNING id",
                                       (response_id, owner))
        return bool(rows)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
