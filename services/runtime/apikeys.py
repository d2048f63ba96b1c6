"""API keys: random tokens that name a tenant, stored as SHA-256 digests only.

A key is `afk_` + 32 random bytes (urlsafe base64, 43 characters). Its key id, the first
8 characters after the prefix, is public: `agentflux tenants list` shows it, `revoke`
takes it, logs name it. The key itself is shown once, when it is made, and never stored:
Redis holds the record of `sha256(key)` (tenant, key id, label, created, revoked), and
the `api_keys` setting holds `tenant:sha256-hex` entries.

Why a plain SHA-256 and not a slow KDF (bcrypt, scrypt, argon2): those protect *low
entropy* secrets (passwords) against offline guessing after a leak, by making each guess
expensive. These keys carry 256 random bits; no number of fast guesses finds one from its
digest, so a slow hash would add no protection, only CPU on every call (milliseconds per
request) and a salt that would forbid finding the record by its digest. The digest can
therefore be the lookup key itself: one Redis round trip per call.

Where timing matters: the Redis lookup is by digest, and its timing can only tell a caller
about digests of keys it chose, which says nothing about any stored key (preimage
resistance). The `api_keys` entries are compared in memory with `hmac.compare_digest`, all
of them on every call, so neither the match nor its position shows in the time taken.

There is no cache of records: every call reads the record, so a revoked key fails on its
very next call, from any gateway. (The gateway may read it in the same Redis script that
counts the call against its tenant's rate limit: still the record as it is at that call.)"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis

from services.runtime.config import Settings
from services.runtime.keys import Keys

__all__ = [
    "KEY_PREFIX",
    "ApiKey",
    "ApiKeyStore",
    "IssuedKey",
    "UnknownKeyIdError",
    "check_tenant",
    "digest_of",
    "new_key",
    "parse_settings_keys",
    "record_of",
]

KEY_PREFIX = "afk_"
KEY_BYTES = 32
ID_CHARS = 8
MAX_KEY_CHARS = 256  # longer is no key of ours or of any sane issuer: not even hashed
MAX_LABEL_CHARS = 100
# The tenant id rule of `interceptors._context.check_id(..., tenant=True)` (and of the
# `tenant` setting), repeated here because this layer cannot import interceptors.
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,63}")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_KEY_CHARS = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces


class UnknownKeyIdError(LookupError):
    """No API key has this key id."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """What is known about a key (never the key nor its digest)."""

    tenant: str
    key_id: str  # "" for a key from the `api_keys` setting (it has no id)
    label: str = ""
    created_ms: int = 0
    revoked: bool = False
    from_settings: bool = False


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A key just made: the only moment the key exists in clear."""

    key: str
    record: ApiKey


def new_key() -> str:
    """A fresh key. Its id (the first characters after the prefix) is alphanumeric, so it
    reads and types well and never starts with `-` on a command line."""
    while True:
        key = KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)
        if key[len(KEY_PREFIX) : len(KEY_PREFIX) + ID_CHARS].isalnum():
            return key


def digest_of(key: str) -> str:
    """The SHA-256 hex digest a key is stored and found by."""
    return hashlib.sha256(key.encode()).hexdigest()


def _key_id(key: str) -> str:
    return key[len(KEY_PREFIX) : len(KEY_PREFIX) + ID_CHARS]


def _ttl_ms(ttl_s: float) -> int:
    if not ttl_s > 0:
        raise ValueError(f"ttl_s must be positive, got {ttl_s}")
    return max(1, round(ttl_s * 1000))


def check_tenant(tenant: str) -> str:
    """`tenant` when it is a well-formed tenant id, else ValueError."""
    if not _TENANT.fullmatch(tenant):
        raise ValueError(
            f"{tenant!r} is not a tenant id: 1-64 letters, digits, `_` or `-`, "
            "starting with a letter or digit"
        )
    return tenant


def parse_settings_keys(entries: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """`(tenant, digest)` of each `tenant:sha256-hex` entry of the `api_keys` setting;
    ValueError naming the first bad entry by its position (entries are not echoed)."""
    parsed: list[tuple[str, str]] = []
    for position, entry in enumerate(entries, start=1):
        tenant, sep, digest = entry.partition(":")
        digest = digest.lower()
        if not (sep and _TENANT.fullmatch(tenant) and _DIGEST.fullmatch(digest)):
            raise ValueError(
                f"AGENTFLUX_API_KEYS entry {position} is not `tenant:sha256-hex` "
                "(a tenant id, then the 64 hex digits of the key's SHA-256)"
            )
        if any(digest == seen for _, seen in parsed):
            raise ValueError(f"AGENTFLUX_API_KEYS entry {position} repeats an earlier key")
        parsed.append((tenant, digest))
    return tuple(parsed)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def record_of(fields: dict[bytes, bytes] | dict[str, str]) -> ApiKey | None:
    """The key record stored as these hash fields (HGETALL's answer), or None when there
    is no record (no fields, or no tenant among them)."""
    got = {_text(k): _text(v) for k, v in fields.items()}
    if "tenant" not in got:
        return None
    return ApiKey(
        tenant=got["tenant"],
        key_id=got.get("key_id", ""),
        label=got.get("label", ""),
        created_ms=int(got.get("created_ms") or 0),
        revoked=got.get("revoked") == "1",
    )


class ApiKeyStore:
    """API keys in Redis under `Keys(namespace)`, plus the `api_keys` setting's entries."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        namespace: str = "",
        settings_keys: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.redis = redis
        self.keys = Keys(namespace)
        self.settings_keys = tuple(settings_keys)

    @classmethod
    def for_settings(cls, redis: aioredis.Redis, settings: Settings) -> ApiKeyStore:
        """The store of the settings' namespace and `api_keys` (ValueError if malformed)."""
        return cls(
            redis,
            namespace=settings.namespace,
            settings_keys=parse_settings_keys(settings.api_keys),
        )

    async def add(self, tenant: str, label: str = "", *, ttl_s: float | None = None) -> IssuedKey:
        """Makes a key for `tenant` and stores its record; returns the key, once.

        With `ttl_s` the key lasts that long unless `renew`ed, then is gone as if never
        made (refused, and no longer listed): a key for a process that may die without
        its clean-up, such as the demo's, does not outlive it for long."""
        check_tenant(tenant)
        if len(label) > MAX_LABEL_CHARS or not label.isprintable():
            raise ValueError(f"a label is at most {MAX_LABEL_CHARS} printable characters")
        ttl_ms = None if ttl_s is None else _ttl_ms(ttl_s)
        while True:
            key = new_key()
            digest, key_id = digest_of(key), _key_id(key)
            # Ids are 8 of the key's characters (48 bits): unique by claim, not by luck.
            if await self.redis.set(self.keys.api_key_id(key_id), digest, nx=True, px=ttl_ms):
                break
        created = int(time.time() * 1000)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self.keys.api_key(digest),
                mapping={
                    "tenant": tenant,
                    "key_id": key_id,
                    "label": label,
                    "created_ms": created,
                    "revoked": 0,
                },
            )
            if ttl_ms is not None:
                pipe.pexpire(self.keys.api_key(digest), ttl_ms)
            # The tenant's index keeps an expired key's id; `list` skips ids whose record
            # is gone, and `delete` takes them out.
            pipe.zadd(self.keys.tenant_keys(tenant), {key_id: created})
            pipe.sadd(self.keys.key_tenants(), tenant)
            await pipe.execute()
        return IssuedKey(key, ApiKey(tenant, key_id, label, created))

    async def renew(self, key_id: str, ttl_s: float) -> bool:
        """Gives the key with `key_id` `ttl_s` more seconds from now. False when it is
        gone (expired or deleted), or was made without a `ttl_s` (it then keeps none)."""
        ttl_ms = _ttl_ms(ttl_s)
        digest = await self.redis.get(self.keys.api_key_id(key_id)) if key_id else None
        if digest is None:
            return False
        async with self.redis.pipeline(transaction=True) as pipe:
            # XX: only what has an expiry gets a new one; a key made without one stays
            # without (and is not renewed).
            pipe.pexpire(self.keys.api_key_id(key_id), ttl_ms, xx=True)
            pipe.pexpire(self.keys.api_key(_text(digest)), ttl_ms, xx=True)
            renewed = await pipe.execute()
        return all(renewed)

    async def lookup(self, key: str) -> ApiKey | None:
        """The record of `key` (revoked ones included: the caller decides), or None when
        it is no key at all. At most one Redis round trip, and none for a settings key."""
        where = self.locate(key)
        return await self.read(where) if isinstance(where, str) else where

    async def read(self, where: str) -> ApiKey | None:
        """The record at `where` (a Redis key that `locate` gave), or None: one round trip."""
        return record_of(cast("dict[bytes, bytes]", await self.redis.hgetall(where)))

    def locate(self, key: str) -> ApiKey | str | None:
        """Where the record of `key` is, without I/O: the record itself for a settings
        key, None for what cannot be a key at all, else the Redis key (a hash) that holds
        it if it is one (read it with HGETALL and `record_of`)."""
        if not key or len(key) > MAX_KEY_CHARS or not _KEY_CHARS.fullmatch(key):
            return None
        digest = digest_of(key)
        tenant = ""
        for entry_tenant, entry_digest in self.settings_keys:  # every entry, every time
            if hmac.compare_digest(entry_digest, digest):
                tenant = entry_tenant
        if tenant:
            return ApiKey(tenant, "", from_settings=True)
        return self.keys.api_key(digest)

    async def list(self, tenant: str = "") -> list[ApiKey]:
        """Every key's record (of `tenant` only, when given), by tenant then creation;
        the `api_keys` setting's entries first, with no key id."""
        from_settings = [
            ApiKey(t, "", from_settings=True)
            for t, _ in self.settings_keys
            if not tenant or t == tenant
        ]
        if tenant:
            tenants = [check_tenant(tenant)]
        else:
            members = cast("set[bytes]", await self.redis.smembers(self.keys.key_tenants()))
            tenants = sorted(_text(m) for m in members)
        async with self.redis.pipeline(transaction=False) as pipe:
            for t in tenants:
                pipe.zrange(self.keys.tenant_keys(t), 0, -1)
            ids = [_text(i) for got in await pipe.execute() for i in got]
        if not ids:
            return from_settings
        digests = await self.redis.mget([self.keys.api_key_id(i) for i in ids])
        async with self.redis.pipeline(transaction=False) as pipe:
            for digest in digests:
                if digest is not None:
                    pipe.hgetall(self.keys.api_key(_text(digest)))
            records = [record_of(fields) for fields in await pipe.execute()]
        return from_settings + [r for r in records if r is not None]

    async def _digest(self, key_id: str) -> str:
        raw = await self.redis.get(self.keys.api_key_id(key_id)) if key_id else None
        if raw is None:
            raise UnknownKeyIdError(key_id)
        return _text(raw)

    async def revoke(self, key_id: str) -> tuple[ApiKey, bool]:
        """Revokes the key with `key_id`: its next call fails, on every gateway. Returns
        its record and whether it was revoked before; UnknownKeyIdError when there is none."""
        record_key = self.keys.api_key(await self._digest(key_id))
        fields = cast("dict[bytes, bytes]", await self.redis.hgetall(record_key))
        record = record_of(fields)
        if record is None:
            raise UnknownKeyIdError(key_id)
        if record.revoked:
            return record, True
        now = int(time.time() * 1000)
        await self.redis.hset(record_key, mapping={"revoked": 1, "revoked_ms": now})
        return ApiKey(record.tenant, record.key_id, record.label, record.created_ms, True), False

    async def delete(self, key_id: str) -> None:
        """Forgets the key with `key_id` entirely (a revoked key stays listed; this is for
        keys made for a moment, such as the demo's). UnknownKeyIdError when there is none."""
        digest = await self._digest(key_id)
        fields = cast("dict[bytes, bytes]", await self.redis.hgetall(self.keys.api_key(digest)))
        record = record_of(fields)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.api_key(digest), self.keys.api_key_id(key_id))
            if record is not None:
                pipe.zrem(self.keys.tenant_keys(record.tenant), key_id)
            await pipe.execute()
        if record is not None and not await self.redis.exists(self.keys.tenant_keys(record.tenant)):
            await self.redis.srem(self.keys.key_tenants(), record.tenant)
