"""The index file's schema, its queries and the values the store passes around.

    answers       id INTEGER PRIMARY KEY, run_id UNIQUE, tenant_id, conversation_id,
                  prompt, answer, digest UNIQUE, complete_time_ns
    answers_fts   FTS5 over (prompt, answer), external content = answers, rowid = id;
                  porter stemming over unicode61 (`refund` finds `refunds`), diacritics
                  folded (`cafe` finds `café`)
    meta          key -> value: the schema version; `rebuild_pending` until the group
                  and the guard of a new file were reset

Tenant and conversation are filtered through a join on `answers` (indexed on tenant,
conversation), not as UNINDEXED FTS columns: the filter is on a real column, and the
text is stored once (the FTS table keeps only its inverted index and reads what
`snippet()` needs from `answers`). `id` is an explicit INTEGER PRIMARY KEY because
VACUUM may renumber implicit rowids, which would detach the FTS rows from their
answers. Both tables are written in one transaction, so they never disagree.

`run_id UNIQUE` makes a redelivered run a no-op; `digest UNIQUE` (sha256 of tenant,
prompt and answer) indexes the same answer to the same prompt once per tenant, under
the first run that gave it. Inserts say `ON CONFLICT DO NOTHING`, so the database alone
is exact.

bm25's statistics (how rare a word is, how long answers are) are those of the whole
file, every tenant's answers together: scores compare within one response only, as the
contract says, and one tenant's ranking moves a little with the others' answers."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "SEARCH",
    "Answer",
    "Hit",
    "Page",
    "Put",
    "fts5_available",
    "transaction",
]

SCHEMA_VERSION = "1"

SCHEMA = """
CREATE TABLE answers (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    prompt TEXT NOT NULL,
    answer TEXT NOT NULL,
    digest BLOB NOT NULL UNIQUE,
    complete_time_ns INTEGER NOT NULL
);
CREATE INDEX answers_tenant ON answers (tenant_id, conversation_id);
CREATE VIRTUAL TABLE answers_fts USING fts5(
    prompt, answer, content='answers', content_rowid='id',
    tokenize='porter unicode61 remove_diacritics 2'
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# bm25 weighs the prompt (column 0) twice the answer (column 1): a query matching what
# was asked is the stronger signal. The snippet is up to 24 tokens of the answer around
# the best match, plain text (no markup: the contract defines none), `…` where cut.
SEARCH = """
SELECT a.run_id, a.conversation_id, a.prompt,
       snippet(answers_fts, 1, '', '', '…', 24),
       bm25(answers_fts, 2.0, 1.0) AS rank,
       a.complete_time_ns
FROM answers_fts JOIN answers AS a ON a.id = answers_fts.rowid
WHERE answers_fts MATCH :match AND a.tenant_id = :tenant AND a.id <= :max_id
  AND (:conversation = '' OR a.conversation_id = :conversation)
ORDER BY rank, a.id
LIMIT :limit OFFSET :offset
"""


@dataclass(frozen=True, slots=True)
class Answer:
    """A completed run's answer, as indexed."""

    run_id: str
    tenant_id: str
    conversation_id: str
    prompt: str
    answer: str
    digest: bytes
    complete_time_ns: int


@dataclass(frozen=True, slots=True)
class Put:
    """What storing an answer did: `indexed` it, and whether a lookup by digest (asked
    for when the Bloom filter said "maybe") `found` the content already there."""

    indexed: bool
    checked: bool = False
    found: bool = False


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result: `score` is higher for better matches (negated bm25)."""

    run_id: str
    conversation_id: str
    prompt: str
    snippet: str
    score: float
    complete_time_ns: int


@dataclass(frozen=True, slots=True)
class Page:
    """One page of hits; `more` when another page follows; `max_id` bounds the rows
    later pages of the same search may see."""

    hits: Sequence[Hit]
    more: bool
    max_id: int


def fts5_available() -> str | None:
    """None when this Python's SQLite has FTS5, else why not."""
    probe = sqlite3.connect(":memory:")
    try:
        probe.execute("CREATE VIRTUAL TABLE probe USING fts5(x)")
        probe.execute("SELECT bm25(probe), snippet(probe, 0, '', '', '', 1) FROM probe")
    except sqlite3.Error as exc:
        return f"SQLite {sqlite3.sqlite_version} of this Python has no usable FTS5 ({exc})"
    finally:
        probe.close()
    return None


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an error (autocommit connections)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
