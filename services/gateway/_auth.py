"""Who is calling: the tenant of every gateway call, from its API key.

With `auth = "required"` (the default) a call presents a key as `authorization: Bearer
<key>` or `x-api-key: <key>`; the key's record names the tenant. A missing, unknown or
revoked key is UNAUTHENTICATED with one message for all three, so a caller learns nothing
about which keys exist (the log says which, naming a key by its public id only, never the
key). Each call reads the key's record (no cache of records), so a revoked key fails on its
next call. Once a key's tenant is known (a key never changes tenant), the record is read in
the same Redis script that counts the call against that tenant's rate limit, and the
script counts it only if the record is still a live key of that tenant: one round trip a
call instead of two. The key alone names the tenant: an `x-tenant-id` header naming
another tenant is ignored (and logged), so a key can never reach another tenant's runs,
and no answer differs by whether that tenant exists.

With `auth = "off"` no key is read: the tenant is `x-tenant-id`, else the `tenant`
setting, and the gateway says once, at start, that calls are not authenticated.

Either way the tenant is bound into the call's `FluxContext` before the handler runs:
the servicer reads it there, and every event, log line and span of the call carries it.
Health checking and reflection never need a key (load balancers and grpcurl `list`)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import grpc
import redis.asyncio as aioredis
import redis.exceptions
from opentelemetry import trace

from interceptors import (
    FluxContext,
    Unauthenticated,
    Unavailable,
    bind,
    current,
    wrap_handler,
)
from services.gateway._limits import RateLimiter
from services.runtime.apikeys import ApiKeyStore, record_of
from services.runtime.bearer import CREDENTIAL_KEYS
from services.runtime.config import Settings

__all__ = ["EXEMPT", "AuthInterceptor", "Authenticator", "auth_interceptor", "presented_key"]

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]

EXEMPT = ("/grpc.health.v1.", "/grpc.reflection.")
# Record key -> tenant of the keys seen live; bounded (emptied when full): a miss only costs
# the call a second round trip.
_TENANTS_KNOWN = 4096
NEED_KEY = (
    "a valid API key is required: send `authorization: Bearer <key>` or `x-api-key: <key>` "
    "(an operator makes one with `agentflux tenants add TENANT`)"
)


def presented_key(metadata: Iterable[tuple[str, Any]]) -> str:
    """The API key a call presents, or UNAUTHENTICATED (no key, a scheme other than
    Bearer, or two different keys)."""
    keys: set[str] = set()
    for name, value in metadata:
        if name not in CREDENTIAL_KEYS or not isinstance(value, str):
            continue
        if name == "authorization":
            scheme, _, value = value.strip().partition(" ")
            if scheme.lower() != "bearer":
                raise Unauthenticated(NEED_KEY)
        keys.add(value.strip())
    if len(keys) > 1:
        raise Unauthenticated("two different API keys presented; send one")
    if not keys or not next(iter(keys)):
        raise Unauthenticated(NEED_KEY)
    return keys.pop()


class Authenticator:
    """Resolves the tenant of a call (see the module doc)."""

    def __init__(self, settings: Settings, store: ApiKeyStore) -> None:
        self.settings = settings
        self.store = store
        self.required = settings.auth == "required"
        self._tenants: dict[str, str] = {}
        if not self.required:
            log.warning(
                "AGENTFLUX_AUTH=off: gateway calls are not authenticated; any caller acts as "
                "the tenant it names in x-tenant-id (else %r). Use it on a trusted machine only.",
                settings.tenant,
            )

    async def context(
        self,
        metadata: Iterable[tuple[str, Any]],
        ctx: FluxContext,
        limiter: RateLimiter | None = None,
    ) -> FluxContext:
        """`ctx` with the caller's tenant, or UNAUTHENTICATED / PERMISSION_DENIED. With a
        `limiter`, the call is also admitted under its tenant's rate limit once the key
        is known good (RESOURCE_EXHAUSTED): a flood of bad keys costs no tenant its quota."""
        if not self.required:
            tenant = ctx.tenant_id or self.settings.tenant
            if limiter is not None:
                await limiter.admit(tenant)
            return ctx.with_(tenant_id=tenant)
        try:
            key = presented_key(metadata)
        except Unauthenticated:
            log.info("refused a call: no API key")
            raise
        where = self.store.locate(key)
        verdict: int | None = None  # the limiter's, when the record was read with it
        if isinstance(where, str):
            known = self._tenants.get(where)
            if known is not None and limiter is not None:
                fields, verdict = await limiter.admit_key(where, known)
                record = record_of(fields)
            else:
                try:
                    record = await self.store.read(where)
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                    raise Unavailable(
                        "the key store (Redis) is unreachable", retry_after=1.0
                    ) from exc
        else:
            record = where
        if record is None or record.revoked:
            if isinstance(where, str):
                self._tenants.pop(where, None)
            if record is None:
                log.info("refused a call: unknown API key")
            else:
                log.warning(
                    "refused a call: API key %s of %s is revoked", record.key_id, record.tenant
                )
            raise Unauthenticated(NEED_KEY)
        if ctx.tenant_id and ctx.tenant_id != record.tenant:
            log.warning(
                "API key %s of %s sent x-tenant-id of another tenant; acting as %s",
                record.key_id or "(from settings)",
                record.tenant,
                record.tenant,
            )
        span = trace.get_current_span()
        span.set_attribute("agentflux.tenant_id", record.tenant)
        span.set_attribute("agentflux.api_key.id", record.key_id or "settings")
        if isinstance(where, str) and self._tenants.get(where) != record.tenant:
            if len(self._tenants) >= _TENANTS_KNOWN:
                self._tenants.clear()
            self._tenants[where] = record.tenant
        if limiter is not None:
            if verdict is None:  # not counted yet (first sight of the key, or a settings key)
                await limiter.admit(record.tenant)
            elif verdict:
                limiter.refuse(record.tenant, verdict)
        return ctx.with_(tenant_id=record.tenant)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Binds each call's tenant (see the module doc) and admits the call under the
    tenant's rate limit. Goes after the context
    interceptor in the server's list: it runs inside the context that one binds, and
    its errors become statuses there."""

    def __init__(self, authenticator: Authenticator, limiter: RateLimiter | None = None) -> None:
        self.authenticator = authenticator
        self.limiter = limiter

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or method.startswith(EXEMPT):
            return handler
        return wrap_handler(handler, self._bound)

    @asynccontextmanager
    async def _bound(self, context: Any) -> AsyncIterator[None]:
        metadata = tuple(context.invocation_metadata() or ())
        ctx = await self.authenticator.context(
            metadata, current() or FluxContext.new(), self.limiter
        )
        with bind(ctx):
            yield


def auth_interceptor(settings: Settings, redis: aioredis.Redis) -> AuthInterceptor:
    """The interceptor of a gateway with these settings, reading keys from `redis`
    (ValueError when the `api_keys` setting is malformed), and admitting each call
    under its tenant's sliding-window rate limit."""
    return AuthInterceptor(
        Authenticator(settings, ApiKeyStore.for_settings(redis, settings)),
        RateLimiter(redis, settings),
    )
