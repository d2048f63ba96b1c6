"""The index file (schema in `_schema`), owned by one thread.

sqlite3 connections belong to the thread that opened them: every call runs on one
dedicated thread (`_call`), which opens, uses and closes the connection, never on the
event loop. Searches and writes take turns there: a search waits for the writes queued
before it (a commit is about 0.5 ms on this machine kind). WAL mode makes a commit one
append to the log and lets other processes (a backup, the sqlite3 shell) read while the
indexer writes. `synchronous=FULL`: the Kafka offset and the guard's record are written
once a handler returns, so a committed answer must survive a power cut too; a lost one
would never be redelivered."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from services.indexer._query import Search
from services.indexer._schema import (
    SCHEMA,
    SCHEMA_VERSION,
    SEARCH,
    Answer,
    Hit,
    Page,
    Put,
    fts5_available,
    transaction,
)

__all__ = ["IndexStore"]

T = TypeVar("T")


class IndexStore:
    """The SQLite index at `path` (see the module doc). `open()` before use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="indexer-sqlite")
        self._conn: sqlite3.Connection | None = None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the index is not open")
        return self._conn

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Checks FTS5, opens (or creates) the file in WAL mode; raises RuntimeError with
        what to do when it cannot."""
        await self._call(self._open)

    def _open(self) -> None:
        why = fts5_available()
        if why is not None:
            raise RuntimeError(
                f"the indexer needs SQLite with FTS5: {why}. Use a Python whose sqlite3 "
                "module is built with FTS5 (Debian's and python.org's are)."
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise RuntimeError(f"{self.path}: cannot use WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous=FULL")
            self._ensure_schema(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        if exists:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None or row[0] != SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} has index schema {row[0] if row else None!r}, this "
                    f"indexer writes {SCHEMA_VERSION!r}: delete the file to rebuild it from "
                    "the topic"
                )
            return
        with transaction(conn):
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("schema", SCHEMA_VERSION), ("rebuild_pending", "1")],
            )

    async def close(self) -> None:
        """Closes the connection on its thread and stops the thread."""
        if self._conn is not None:
            await self._call(self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- meta ------------------------------------------------------------------------

    async def rebuild_pending(self) -> bool:
        """Whether this file was created and its consumer group not yet reset."""
        return await self._call(self._rebuild_pending)

    def _rebuild_pending(self) -> bool:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'rebuild_pending'").fetchone()
        return row is not None and row[0] == "1"

    async def rebuild_started(self) -> None:
        """Records that the group and guard of this new file were reset."""
        await self._call(self._db.execute, "DELETE FROM meta WHERE key = 'rebuild_pending'")

    # -- writing ---------------------------------------------------------------------

    async def put(self, answer: Answer, *, check_first: bool) -> Put:
        """Indexes `answer` unless its run or its content is indexed already;
        `check_first` looks the digest up before writing (to confirm a Bloom "maybe")."""
        return await self._call(self._put, answer, check_first)

    def _put(self, a: Answer, check_first: bool) -> Put:
        db = self._db
        found = False
        if check_first:
            found = (
                db.execute("SELECT 1 FROM answers WHERE digest = ?", (a.digest,)).fetchone()
                is not None
            )
            if found:
                return Put(indexed=False, checked=True, found=True)
        with transaction(db):
            cursor = db.execute(
                "INSERT INTO answers (run_id, tenant_id, conversation_id, prompt, answer,"
                " digest, complete_time_ns) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (
                    a.run_id,
                    a.tenant_id,
                    a.conversation_id,
                    a.prompt,
                    a.answer,
                    a.digest,
                    a.complete_time_ns,
                ),
            )
            indexed = cursor.rowcount == 1
            if indexed:
                db.execute(
                    "INSERT INTO answers_fts (rowid, prompt, answer) VALUES (?, ?, ?)",
                    (cursor.lastrowid, a.prompt, a.answer),
                )
        return Put(indexed=indexed, checked=check_first, found=found)

    # -- reading ---------------------------------------------------------------------

    async def digests(self, batch: int = 10_000) -> list[bytes]:
        """Every indexed content digest, oldest first (fills the Bloom filter)."""
        return await self._call(lambda: list(self._iter_digests(batch)))

    def _iter_digests(self, batch: int) -> Iterator[bytes]:
        last = 0
        while True:
            rows = self._db.execute(
                "SELECT id, digest FROM answers WHERE id > ? ORDER BY id LIMIT ?", (last, batch)
            ).fetchall()
            if not rows:
                return
            for _, digest in rows:
                yield bytes(digest)
            last = rows[-1][0]

    async def search(self, search: Search) -> Page:
        """One page of `search`, best first."""
        return await self._call(self._search, search)

    def _search(self, s: Search) -> Page:
        db = self._db
        max_id = s.max_id
        if max_id is None:
            max_id = int(db.execute("SELECT coalesce(max(id), 0) FROM answers").fetchone()[0])
        rows = db.execute(
            SEARCH,
            {
                "match": s.match,
                "tenant": s.tenant_id,
                "max_id": max_id,
                "conversation": s.conversation_id,
                "limit": s.limit + 1,
                "offset": s.offset,
            },
        ).fetchall()
        hits = [
            Hit(
                run_id=run_id,
                conversation_id=conversation_id,
                prompt=prompt,
                snippet=snippet,
                score=-rank,
                complete_time_ns=complete_time_ns,
            )
            for run_id, conversation_id, prompt, snippet, rank, complete_time_ns in rows[: s.limit]
        ]
        return Page(hits=hits, more=len(rows) > s.limit, max_id=max_id)
