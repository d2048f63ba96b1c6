"""The Memcached adapter against the real local memcached; keys carry the test's prefix."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from pymemcache.client.base import PooledClient

from services.runtime.adapters.memcached import connect_memcached
from services.runtime.config import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def client(settings: Settings) -> Iterator[PooledClient]:
    c = connect_memcached(settings)
    yield c
    c.close()


def test_set_get_delete_bytes(client: PooledClient, prefix: str) -> None:
    key = f"{prefix}prompt:planner:v1"
    value = b"You are a planner.\x00\xff binary-safe"
    assert client.get(key) is None
    assert client.set(key, value, noreply=False) is True
    assert client.get(key) == value
    assert client.delete(key, noreply=False) is True
    assert client.get(key) is None
    assert client.delete(key, noreply=False) is False


def test_value_expires(client: PooledClient, prefix: str) -> None:
    key = f"{prefix}flags:tenant-a"
    assert client.set(key, b"on", expire=1, noreply=False) is True
    assert client.get(key) == b"on"
    # memcached counts expiry in whole seconds: gone within about two.
    deadline = time.monotonic() + 3
    while client.get(key) is not None:
        assert time.monotonic() < deadline, "value did not expire"
        time.sleep(0.1)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_memcached_fails_fast() -> None:
    down = Settings(memcached_servers=f"127.0.0.1:{_closed_port()}")
    client = connect_memcached(down, timeout=0.25)
    try:
        began = time.monotonic()
        with pytest.raises(ConnectionRefusedError):
            client.get("anything")
        assert time.monotonic() - began < 2
    finally:
        client.close()


def test_unresponsive_memcached_times_out() -> None:
    # A server that accepts connections but never answers: the read timeout applies.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        client = connect_memcached(Settings(memcached_servers=f"127.0.0.1:{port}"), timeout=0.25)
        try:
            began = time.monotonic()
            with pytest.raises(TimeoutError):  # socket.timeout
                client.get("anything")
            assert time.monotonic() - began < 2
        finally:
            client.close()
