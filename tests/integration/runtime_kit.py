"""Shared pieces of the consumer-runtime tests: a test's own topics, queues, groups and
keys on the real brokers, removed afterwards; and a fault process started with real
signals (tests/integration/consumer_proc.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka import Message as Record
from confluent_kafka.admin import AdminClient

from services.runtime.config import Settings

ROOT = Path(__file__).resolve().parents[2]


async def eventually(
    check: Callable[[], Awaitable[Any]], *, timeout: float = 30.0, what: str = "condition"
) -> Any:
    """Polls `check` until it returns something truthy; fails after `timeout` seconds.
    Tests wait on conditions (a record, an offset, a queue depth), never on sleeps."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        got = await check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def committed(settings: Settings, group: str, topic: str, partitions: int) -> list[int]:
    """The group's committed offsets of `topic` as the broker has them (-1001: none)."""
    reader = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": group})
    try:
        got = reader.committed([TopicPartition(topic, p) for p in range(partitions)], 10)
        return [tp.offset for tp in got]
    finally:
        reader.close()


def read_all(settings: Settings, topic: str, n: int, timeout: float = 30.0) -> list[Record]:
    """The first `n` records of `topic` (a throwaway group, from the beginning)."""
    reader = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"reader.{os.urandom(6).hex()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    reader.subscribe([topic])
    out: list[Record] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < n:
            assert time.monotonic() < deadline, f"got {len(out)} of {n} records of {topic}"
            record = reader.poll(0.25)
            if record is not None and record.error() is None:
                out.append(record)
    finally:
        reader.close()
    return out


def headers(record: Record) -> dict[str, bytes]:
    raw: Any = record.headers() or []
    return {k: v or b"" for k, v in raw}


async def delete_kafka(settings: Settings, topics: list[str], groups: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    futures = list(admin.delete_topics(topics).values()) if topics else []
    if groups:
        futures += admin.delete_consumer_groups(groups).values()
    for fut in futures:
        # A group that never joined has nothing to delete.
        with contextlib.suppress(Exception):
            await asyncio.wrap_future(fut)


@dataclass
class FaultProc:
    """One consumer process started the way a service is, stopped with signals."""

    args: list[str]
    redis: aioredis.Redis
    prefix: str
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def start(self, log_dir: Path) -> FaultProc:
        self.log = log_dir / f"proc-{time.monotonic_ns()}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.integration.consumer_proc", *self.args],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.extra},
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def ready(self, timeout: float = 60.0) -> None:
        async def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"fault process exited early:\n{self.output()}")
            return bool(await self.redis.exists(f"{self.prefix}ready:{self.pid}"))

        await eventually(up, timeout=timeout, what="the fault process to be ready")

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def exited(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        proc = self.proc

        async def gone() -> bool:
            return proc.poll() is not None

        await eventually(gone, timeout=timeout, what="the fault process to exit")
        code = proc.returncode
        assert code is not None
        return code

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


async def entries(redis: aioredis.Redis, key: str) -> list[str]:
    """A Redis list of `run|pid|attempt` entries, decoded."""
    return [v.decode() for v in await redis.lrange(key, 0, -1)]
