"""`agentflux tenants add|list|revoke`: the API keys that name each tenant.

Keys live in the Redis of the settings' namespace (`services.runtime.apikeys`): only their
SHA-256 digests, so `add` prints a key once and nothing can show it again. `list` shows
key ids, labels, creation times and whether each key is revoked, never a key or a
digest. `revoke` takes effect on the key's next call, on every gateway."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, TypeVar

import redis.exceptions
import typer
from pydantic import ValidationError

from services.runtime.adapters.redis import connect_redis
from services.runtime.apikeys import ApiKey, ApiKeyStore, UnknownKeyIdError, check_tenant
from services.runtime.config import Settings

__all__ = ["tenants_app"]

T = TypeVar("T")

tenants_app = typer.Typer(
    help="Tenants and their API keys (stored hashed in Redis).", no_args_is_help=True
)


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(message, fg="red", err=True)
    return typer.Exit(code)


def _with_store(action: Callable[[ApiKeyStore], Awaitable[T]]) -> T:
    """Runs `action` against the namespace's key store; Redis or settings trouble ends
    the command with a message."""
    try:
        settings = Settings()
    except ValidationError as exc:
        raise _fail(f"invalid configuration (see `agentflux config`): {exc}", 2) from None

    async def run() -> T:
        client = connect_redis(settings)
        try:
            return await action(ApiKeyStore.for_settings(client, settings))
        finally:
            await client.aclose()

    try:
        return asyncio.run(run())
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise _fail(
            f"cannot reach Redis at {settings.redis_dsn} ({exc}); is the stack up? "
            "`agentflux stack up` starts it"
        ) from None
    except ValueError as exc:  # a malformed AGENTFLUX_API_KEYS entry
        raise _fail(str(exc), 2) from None


def _tenant(value: str) -> str:
    try:
        return check_tenant(value)
    except ValueError as exc:
        raise _fail(str(exc), 2) from None


@tenants_app.command("add")
def add(
    tenant: Annotated[str, typer.Argument(help="The tenant the key acts as.", show_default=False)],
    name: Annotated[
        str, typer.Option("--name", help="A label for the key (who or what uses it).")
    ] = "",
) -> None:
    """Make an API key for TENANT and print it, once: only its digest is stored."""
    _tenant(tenant)
    if len(name) > 100 or not name.isprintable():
        raise _fail("--name: at most 100 printable characters", 2)
    issued = _with_store(lambda store: store.add(tenant, name))
    # The key alone on stdout, so `KEY=$(agentflux tenants add acme)` works; the rest
    # on stderr.
    typer.echo(issued.key)
    typer.echo(
        f"key {issued.record.key_id} of tenant {tenant} made. The key (on stdout) is shown "
        "this once: agentflux stores only its SHA-256 digest and cannot show it again.\n"
        "Clients send it as `authorization: Bearer <key>` or `x-api-key: <key>`; "
        "`agentflux ask` reads it from AGENTFLUX_API_KEY.",
        err=True,
    )


def _when(ms: int) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _row(key: ApiKey) -> str:
    if key.from_settings:
        key_id, state, label = "-", "active", "(AGENTFLUX_API_KEYS)"
    else:
        key_id, label = key.key_id, key.label
        state = "revoked" if key.revoked else "active"
    return f"{key.tenant:<24} {key_id:<8}  {state:<7}  {_when(key.created_ms):<20}  {label}"


@tenants_app.command("list")
def list_keys(
    tenant: Annotated[
        str, typer.Argument(help="Only this tenant's keys.", show_default=False)
    ] = "",
) -> None:
    """List tenants and their keys: key id, state, created, label (never keys)."""
    if tenant:
        _tenant(tenant)
    keys = _with_store(lambda store: store.list(tenant))
    if not keys:
        typer.echo("no API keys" + (f" for tenant {tenant}" if tenant else ""), err=True)
        return
    typer.echo(f"{'TENANT':<24} {'KEY ID':<8}  {'STATE':<7}  {'CREATED (UTC)':<20}  LABEL")
    for key in keys:
        typer.echo(_row(key).rstrip())


@tenants_app.command("revoke")
def revoke(
    key_id: Annotated[
        str, typer.Argument(help="The key id (`agentflux tenants list`).", show_default=False)
    ],
) -> None:
    """Revoke a key: its next call fails, on every gateway."""
    try:
        key, before = _with_store(lambda store: store.revoke(key_id))
    except UnknownKeyIdError:
        raise _fail(
            f"no API key with id {key_id!r} (`agentflux tenants list` shows them)"
        ) from None
    if before:
        typer.echo(f"key {key.key_id} of tenant {key.tenant} was already revoked")
    else:
        typer.echo(f"key {key.key_id} of tenant {key.tenant} revoked: its next call fails")
