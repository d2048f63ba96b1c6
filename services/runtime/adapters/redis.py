"""Redis client factory (redis-py asyncio with the hiredis parser).

Idempotency records, session state, locks and rate limits live here, so timeouts are
short: a Redis that does not answer should fail the operation, not hang it.

The client's pool and connections are redis-py's with two costs taken off the path
every command takes (a run makes about thirty round trips, a consumer with a backlog
several a batch). Both keep redis-py's behaviour, and fall back to its own code for
anything but the common case:

- `LeanPool` hands an idle connection out, and takes it back, without the condition,
  timeout and lock redis-py's `BlockingConnectionPool` goes through every time (about a
  quarter of a command's CPU): with nobody waiting, there is nothing for them to order.
  When the pool is exhausted, callers queue in redis-py's own code, with its timeout.
  It does not record redis-py's own pool metrics on that fast path (the project does
  not turn them on; its spans time every command).
- `LeanConnection` bounds a write with `asyncio.timeout` instead of `asyncio.wait_for`,
  which on Python 3.11 starts a task per command, and only when the socket did not take
  the whole command at once (else nothing can wait). Same timeout, same errors, and the
  connection is dropped on any failure mid-write, as redis-py does.

`bench/README.md` has the figures."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.runtime.config import Settings

__all__ = ["LeanConnection", "LeanPool", "connect_redis"]


class LeanConnection(aioredis.Connection):
    """A redis-py TCP connection whose writes are bounded without a task per command."""

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        if not self.socket_timeout or not self.is_connected:
            # Connecting (and writing with no timeout) is redis-py's own business.
            await super().send_packed_command(command, check_health)
            return
        if check_health:
            await self.check_health()  # type: ignore[no-untyped-call]
        if isinstance(command, str):
            command = command.encode()
        if isinstance(command, bytes):
            command = [command]
        writer = self._writer
        assert writer is not None  # is_connected
        try:
            writer.writelines(command)
            if writer.transport.get_write_buffer_size():
                # The socket did not take it all: drain() may wait, within the timeout.
                async with asyncio.timeout(self.socket_timeout):
                    await writer.drain()
            else:
                await writer.drain()  # returns at once (raises if the connection is lost)
        except TimeoutError:  # before OSError: TimeoutError is one
            await self.disconnect(nowait=True)
            raise RedisTimeoutError("Timeout writing to socket") from None
        except OSError as e:
            await self.disconnect(nowait=True)
            err_no, errmsg = ("UNKNOWN", e.args[0]) if len(e.args) == 1 else e.args[:2]
            raise RedisConnectionError(f"Error {err_no} while writing to socket. {errmsg}.") from e
        except BaseException:
            # Part of the command may be written: the connection cannot be reused.
            await self.disconnect(nowait=True)
            raise


class LeanPool(aioredis.BlockingConnectionPool):
    """`BlockingConnectionPool` with a fast path for an idle connection (module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queued = 0  # callers in redis-py's waiting path: the fast path yields to them

    @property
    def waiting(self) -> int:
        """Callers waiting for a connection (the pool is exhausted)."""
        return self._queued

    def _fast(self) -> bool:
        return not self._queued and not self._in_maintenance

    async def get_connection(
        self, command_name: Any = None, *keys: Any, **options: Any
    ) -> AbstractConnection:
        if self._available_connections and self._fast():
            connection = self._available_connections.pop()
            self._in_use_connections.add(connection)
            try:
                # redis-py's ensure_connection, called only when it has work to do: it
                # reconnects a connection that is closed or has unread data (the reply
                # of a caller cancelled mid-command).
                try:
                    dirty = not connection.is_connected or await connection.can_read()
                except (RedisConnectionError, RedisTimeoutError, OSError):
                    dirty = True
                if dirty:
                    await self.ensure_connection(connection)
            except BaseException:
                await self.release(connection)
                raise
            return connection
        self._queued += 1
        try:
            queued: AbstractConnection = await super().get_connection()  # type: ignore[no-untyped-call]
            return queued
        finally:
            self._queued -= 1

    async def release(self, connection: AbstractConnection) -> None:
        if not self._fast() or connection.should_reconnect():  # type: ignore[no-untyped-call]
            # Someone may be waiting to be woken, or the connection must be rebuilt.
            await super().release(connection)
            return
        self._in_use_connections.remove(connection)
        self._available_connections.append(connection)


def connect_redis(
    settings: Settings, *, timeout: float = 5.0, max_connections: int = 64
) -> aioredis.Redis:
    """A pooled asyncio client for `settings.redis_dsn` (hiredis parses replies when
    installed, which the `redis[hiredis]` dependency ensures)."""
    # A blocking pool: a burst of concurrent handlers waits for a connection instead
    # of failing with MaxConnectionsError once the pool is exhausted.
    pool = LeanPool.from_url(
        settings.redis_dsn,
        max_connections=max_connections,
        timeout=timeout,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        health_check_interval=30,
        client_name="agentflux",
    )
    if pool.connection_class is aioredis.Connection:  # a unix socket or TLS URL keeps its own
        pool.connection_class = LeanConnection
    client: aioredis.Redis = aioredis.Redis.from_pool(pool)  # owns and closes the pool
    return client
