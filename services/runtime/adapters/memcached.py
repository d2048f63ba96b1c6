"""Memcached clients: `AsyncMemcached` for the services, pymemcache for synchronous tools.

Memcached holds only disposable copies (prompt templates, tool metadata, feature
flags): every read has a source to fall back to. Timeouts are therefore tight, so an
unreachable memcached costs a request milliseconds, not seconds.

`AsyncMemcached` speaks the text protocol (`get`, `set`, `delete`) on the event loop
over a small pool of connections. The services used pymemcache on a thread of their
own before: a read crossed to a thread and back (about 330 µs of CPU on the development
machine, against about 120 for the same read on the loop), and the pool's threads woke
for every read. A connection is reused only after a complete, expected reply; one that
timed out, was cancelled mid-request or got an error reply is closed, so a late reply
can never be read as the answer to the next request.

Errors: `MemcachedError` is an error reply (memcached is up and refused the request,
say a value over its item size limit); anything else that fails a call (`OSError`,
`TimeoutError`, `ConnectionError` for a closed connection or a reply that makes no
sense) means memcached is not reachable as expected."""

from __future__ import annotations

import asyncio
import re
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NoReturn, TypeVar

from pymemcache.client.base import PooledClient

from services.runtime.config import Settings

__all__ = ["AsyncMemcached", "MemcachedError", "connect_memcached", "connect_memcached_async"]

_MAX_KEY = 250  # memcached's limit
_KEY = re.compile(rb"[\x21-\x7e]{1,250}")  # printable ASCII, no spaces or control bytes
_END = b"END\r\n"
_STORED = b"STORED\r\n"
_DELETED = b"DELETED\r\n"
_NOT_FOUND = b"NOT_FOUND\r\n"
_ERRORS = (b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR")

T = TypeVar("T")


class MemcachedError(Exception):
    """Memcached answered the request with an error (`ERROR`, `CLIENT_ERROR`,
    `SERVER_ERROR`, or `NOT_STORED` to a `set`): it is up, the request was refused."""


@dataclass(slots=True, eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def close(self) -> None:
        self.writer.close()


class AsyncMemcached:
    """An asyncio Memcached client for one server (`server` is `(host, port)`).

    Each call takes an idle connection or opens one (within `connect_timeout`), sends
    its request and reads the reply within `timeout`. At most `max_connections` are
    open at once; further calls wait for one to come back. Connections open on first
    use, so the client can be made outside an event loop; it belongs to the loop that
    first uses it. Values are bytes; keys are str of 1 to 250 printable ASCII
    characters (`ValueError` otherwise)."""

    def __init__(
        self,
        server: tuple[str, int],
        *,
        connect_timeout: float = 0.25,
        timeout: float = 0.25,
        max_connections: int = 16,
    ) -> None:
        if connect_timeout <= 0 or timeout <= 0 or max_connections < 1:
            raise ValueError("timeouts must be positive and max_connections >= 1")
        # Named as pymemcache names them: logs and spans read them the same way.
        self.server = server
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._max = max_connections
        self._idle: deque[_Connection] = deque()
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    # -- commands ------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        """The value of `key`, or None when memcached has none."""
        k = _key(key)

        async def read(reader: asyncio.StreamReader) -> bytes | None:
            line = await reader.readuntil(b"\r\n")
            value: bytes | None = None
            if line.startswith(b"VALUE "):
                data = await reader.readexactly(_value_size(line, k) + 2)
                if data[-2:] != b"\r\n":
                    raise ConnectionError("memcached's value did not end with CRLF")
                value = data[:-2]
                line = await reader.readuntil(b"\r\n")
            if line != _END:
                _refused(line, "get")
            return value

        return await self._exchange(b"get " + k + b"\r\n", read)

    async def set(self, key: str, value: bytes, *, expire: int = 0) -> None:
        """Stores `value` under `key` for `expire` seconds (0: until evicted);
        `MemcachedError` when memcached does not store it."""
        k = _key(key)
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(f"value must be bytes, got {type(value).__name__}")
        if expire < 0:
            raise ValueError(f"expire must be >= 0, got {expire}")
        head = b"set %b 0 %d %d\r\n" % (k, expire, len(value))
        await self._exchange(head + bytes(value) + b"\r\n", _answer(_STORED, None, "set"))

    async def delete(self, key: str) -> bool:
        """Deletes `key`; False when memcached had no such key."""
        request = b"delete " + _key(key) + b"\r\n"
        return await self._exchange(request, _answer(_DELETED, _NOT_FOUND, "delete"))

    def close(self) -> None:
        """Closes the idle connections; those in use close when their call ends. Calls
        after this raise `RuntimeError`."""
        self._closed = True
        while self._idle:
            self._idle.popleft().close()
            self._open -= 1
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)  # wakes them to find the client closed

    # -- the pool --------------------------------------------------------------------

    async def _exchange(
        self, request: bytes, read: Callable[[asyncio.StreamReader], Awaitable[T]]
    ) -> T:
        """Sends `request` on a connection of the pool and reads its reply with `read`,
        within `timeout`; the connection goes back to the pool only if `read` returned."""
        conn = await self._acquire()
        reusable = False
        try:
            async with asyncio.timeout(self.timeout):
                conn.writer.write(request)
                answer = await read(conn.reader)
            reusable = True
            return answer
        except asyncio.IncompleteReadError as exc:
            raise ConnectionError("memcached closed the connection") from exc
        except asyncio.LimitOverrunError as exc:  # a line of 64 KiB: not memcached
            raise ConnectionError("unexpected reply from memcached: no line end") from exc
        finally:
            self._release(conn, reusable)

    async def _acquire(self) -> _Connection:
        while True:
            if self._closed:
                raise RuntimeError("the memcached client is closed")
            if self._idle:
                return self._idle.pop()  # the most recent: its socket is the warmest
            if self._open < self._max:
                break
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken, then cancelled: the turn goes to the next one
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self._open += 1
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(*self.server)
        except BaseException:
            self._open -= 1
            self._wake()
            raise
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # Requests are small and answered one at a time: no waiting for more bytes.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(reader, writer)

    def _release(self, conn: _Connection, reusable: bool) -> None:
        if reusable and not self._closed:
            self._idle.append(conn)
        else:
            conn.close()
            self._open -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


def _key(key: str) -> bytes:
    raw = key.encode() if isinstance(key, str) else None
    if raw is None or not _KEY.fullmatch(raw):
        raise ValueError(
            f"memcached key must be 1 to {_MAX_KEY} printable ASCII characters "
            f"without spaces, got {key!r:.80}"
        )
    return raw


def _answer(
    yes: bytes, no: bytes | None, command: str
) -> Callable[[asyncio.StreamReader], Awaitable[bool]]:
    """Reads a one-line reply: True for `yes`, False for `no`; refused otherwise."""

    async def read(reader: asyncio.StreamReader) -> bool:
        line = await reader.readuntil(b"\r\n")
        if line == yes:
            return True
        if no is not None and line == no:
            return False
        _refused(line, command)

    return read


def _value_size(line: bytes, key: bytes) -> int:
    # VALUE <key> <flags> <bytes> [<cas>]\r\n
    parts = line.split()
    if len(parts) < 4 or parts[1] != key or not parts[3].isdigit():
        raise ConnectionError(f"unexpected reply from memcached: {line[:80]!r}")
    return int(parts[3])


def _refused(line: bytes, command: str) -> NoReturn:
    text = line.decode("ascii", "replace").strip()
    if line.startswith(_ERRORS) or (command == "set" and line == b"NOT_STORED\r\n"):
        raise MemcachedError(f"memcached refused {command}: {text}")
    raise ConnectionError(f"unexpected reply from memcached to {command}: {text[:80]!r}")


def connect_memcached_async(settings: Settings, *, timeout: float = 0.25) -> AsyncMemcached:
    """The services' client for `settings.memcached_address` (see `AsyncMemcached`)."""
    return AsyncMemcached(settings.memcached_address, connect_timeout=timeout, timeout=timeout)


def connect_memcached(settings: Settings, *, timeout: float = 0.25) -> PooledClient:
    """A thread-safe pooled pymemcache client for `settings.memcached_address`, for
    synchronous code (tools, tests, the stack's health check); values are bytes."""
    return PooledClient(
        settings.memcached_address,
        connect_timeout=timeout,
        timeout=timeout,
        no_delay=True,
        max_pool_size=16,
    )
