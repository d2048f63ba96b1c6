"""A `SearchIndexRequest` checked and turned into what the store runs.

The caller's words never reach FTS5 as syntax: the query is cut into words the way the
index's `unicode61` tokenizer cuts text (runs of letters and digits), and each word is
quoted, so `"`, `*`, `:`, `^`, `(`, `NEAR`, `AND`, `OR` and `NOT` are either dropped or
searched as plain words. The words are OR-ed: bm25 ranks answers matching more (and
rarer) words higher, and a question phrased in full sentences still finds answers that
lack its filler words.

A page token is opaque to callers: base64 of the offset, the highest row id the first
page could see (so rows indexed while a caller pages never push results across a page
boundary) and a fingerprint of the tenant, query and conversation (a token is only good
for the search that issued it; `page_size` may change between pages, as AIP-158 allows)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from agentflux.v1 import index_pb2

from interceptors import InvalidArgument

__all__ = ["MAX_QUERY_CHARS", "MAX_TERMS", "Search", "fts_query", "page_token", "parse_request"]

MAX_QUERY_CHARS = 2048
MAX_TERMS = 32
DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 100
MAX_OFFSET = 10_000  # deeper pages re-rank every match each time; refine the query instead

# Letters and digits (Unicode categories L* and N*), as `unicode61` keeps them.
_WORD = re.compile(r"[^\W_]+")
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,63}")
_PAGE_FORMAT = "v1"


@dataclass(frozen=True, slots=True)
class Search:
    """One page of one search, ready for the store."""

    tenant_id: str
    match: str  # the FTS5 query: quoted words, OR-ed
    conversation_id: str
    limit: int
    offset: int
    max_id: int | None  # None on the first page: the store takes its highest row id
    fingerprint: str


def fts_query(text: str) -> str:
    """The safe FTS5 query of the user's `text` (see the module doc)."""
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidArgument("query", f"longer than {MAX_QUERY_CHARS} characters")
    # Lower-cased only to drop repeats; the tokenizer folds case itself.
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(text)))
    if not words:
        raise InvalidArgument("query", "has no words to search for (letters or digits)")
    # A word holds only letters and digits, so it can never close its quotes.
    return " OR ".join(f'"{w}"' for w in words[:MAX_TERMS])


def _fingerprint(tenant_id: str, match: str, conversation_id: str) -> str:
    data = "\x00".join((tenant_id, match, conversation_id)).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def page_token(offset: int, max_id: int, fingerprint: str) -> str:
    """The token of the page starting at `offset` of the search `fingerprint`."""
    raw = f"{_PAGE_FORMAT}:{offset}:{max_id}:{fingerprint}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_token(token: str, fingerprint: str) -> tuple[int, int]:
    bad = InvalidArgument("page_token", "not a page token of this search")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad from None
    version, _, rest = raw.partition(":")
    offset_s, _, rest = rest.partition(":")
    max_id_s, _, got = rest.partition(":")
    if version != _PAGE_FORMAT or got != fingerprint:
        raise bad
    if not (offset_s.isdigit() and max_id_s.isdigit()) or len(offset_s) + len(max_id_s) > 30:
        raise bad
    offset = int(offset_s)
    if not 0 < offset <= MAX_OFFSET:
        raise bad
    return offset, int(max_id_s)


def parse_request(request: index_pb2.SearchIndexRequest) -> Search:
    """Checks `request`; raises `InvalidArgument` naming the field at fault."""
    if not request.tenant_id:
        raise InvalidArgument("tenant_id", "required")
    if not _TENANT.fullmatch(request.tenant_id):
        raise InvalidArgument("tenant_id", "not a tenant id (1-64 letters, digits, _ or -)")
    if not request.query.strip():
        raise InvalidArgument("query", "required")
    match = fts_query(request.query)
    size = request.page_size or DEFAULT_PAGE_SIZE
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise InvalidArgument("page_size", f"must be 1-{MAX_PAGE_SIZE} (0 means 10)")
    if len(request.conversation_id) > 128:
        raise InvalidArgument("conversation_id", "longer than 128 characters")
    fingerprint = _fingerprint(request.tenant_id, match, request.conversation_id)
    offset: int = 0
    max_id: int | None = None
    if request.page_token:
        offset, max_id = _read_token(request.page_token, fingerprint)
    return Search(
        tenant_id=request.tenant_id,
        match=match,
        conversation_id=request.conversation_id,
        limit=size,
        offset=offset,
        max_id=max_id,
        fingerprint=fingerprint,
    )
