"""The local stack: Kafka, RabbitMQ, Redis and Memcached on loopback, without Docker.

`up` installs what is missing, starts what is not running, waits until each service
does real work, then creates the contract topics and declares the task queues. It is
idempotent and safe to run from two processes at once (a lock file serialises them).
`down` stops only the processes `up` started (by pid file) and keeps data unless
asked to wipe it. `status` probes each service.
"""

from __future__ import annotations

import asyncio
import fcntl
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from services.runtime.adapters.rabbitmq import RabbitConnection
from services.runtime.config import INDEX_FOLDER, SPAN_STORE_FOLDER, Settings
from services.runtime.topology import (
    declare_task_topology,
    ensure_kafka_topics,
    kafka_topics,
    task_topologies,
)
from services.stack._errors import StackError
from services.stack._install import TOOLS, ensure_commands
from services.stack._procs import is_alive, port_open, read_pid, spawn, stop, tail
from services.stack._services import Service, all_services

__all__ = ["ServiceStatus", "StackError", "down", "status", "up"]

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """What `status` found for one service."""

    name: str
    host: str
    ports: dict[str, int]
    pid: int | None
    healthy: bool
    detail: str
    log_file: str


@contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    settings.stack_dir.mkdir(parents=True, exist_ok=True)
    with (settings.stack_dir / ".lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _probe(service: Service) -> str | None:
    """None when healthy, else why not."""
    try:
        service.probe()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".strip()
    return None


def _where(service: Service) -> str:
    ports = ", ".join(f"{role} {p}" for role, p in service.ports.items())
    return f"{service.name} ({service.settings.host}: {ports}; log {service.log_file})"


def _start(service: Service, say: Say) -> int:
    host = service.settings.host
    for role, port in service.ports.items():
        if port_open(host, port):
            raise StackError(
                f"{service.name}: port {host}:{port} ({role}) is taken by another process "
                f"not started by this stack; stop it or choose another port "
                f"(AGENTFLUX_{service.port_fields[role].upper()}). Log: {service.log_file}"
            )
    service.prepare(say)
    return spawn(
        service.argv(), env=service.env(), log_file=service.log_file, pid_file=service.pid_file
    )


def _wait_ready(starting: list[tuple[Service, int, float]], timeout: float, say: Say) -> None:
    """Probes every starting service each round, so each one's time is its own."""
    last: dict[str, str] = {}
    pending = list(starting)
    while pending:
        for entry in list(pending):
            service, pid, began = entry
            if not is_alive(pid):
                raise StackError(
                    f"{_where(service)} exited during start-up. Last log lines:\n"
                    f"{tail(service.log_file)}"
                )
            if port_open(service.settings.host, service.port):
                why = _probe(service)
                if why is None:
                    took = time.monotonic() - began
                    say(
                        f"{service.name:<10} ready on {service.settings.host}:{service.port} "
                        f"in {took:.1f}s"
                    )
                    pending.remove(entry)
                    continue
                last[service.name] = why
            if time.monotonic() > began + timeout:
                raise StackError(
                    f"{_where(service)} did not become ready within {timeout:.0f}s "
                    f"(last probe: {last.get(service.name, 'port closed')}). "
                    f"Last log lines:\n{tail(service.log_file)}"
                )
        if pending:
            time.sleep(0.25)


def up(settings: Settings, say: Say = _quiet) -> list[ServiceStatus]:
    """Installs, starts and readies the stack, then creates topics and queues."""
    t0 = time.monotonic()
    services = all_services(settings)
    with _locked(settings):
        say(f"stack folder {settings.stack_dir}")
        ensure_commands([*(c for s in services for c in s.commands), *TOOLS], say)

        starting: list[tuple[Service, int, float]] = []
        for service in services:
            pid = read_pid(service.pid_file)
            if pid is not None:
                say(f"{service.name:<10} already running (pid {pid})")
                starting.append((service, pid, time.monotonic()))
                continue
            began = time.monotonic()
            pid = _start(service, say)
            say(f"{service.name:<10} starting on {settings.host}:{service.port} (pid {pid})")
            starting.append((service, pid, began))

        _wait_ready(starting, settings.startup_timeout_s, say)

        began = time.monotonic()
        created = asyncio.run(_declare_topology(settings))
        new = sorted(name for name, fresh in created.items() if fresh)
        say(
            f"topology   {len(created)} topics ({len(new)} new), task queues declared "
            f"in {time.monotonic() - began:.1f}s"
        )
    say(f"stack up in {time.monotonic() - t0:.1f}s")
    return status(settings)


async def _declare_topology(settings: Settings) -> dict[str, bool]:
    created = await ensure_kafka_topics(settings, kafka_topics(settings))
    async with await RabbitConnection.connect(settings) as rabbit:
        for topo in task_topologies(settings):
            await declare_task_topology(rabbit.channel, topo)
    return created


def down(settings: Settings, *, wipe: bool = False, say: Say = _quiet) -> None:
    """Stops what `up` started; with `wipe`, deletes the stack folder too."""
    with _locked(settings):
        for service in reversed(all_services(settings)):
            pid = read_pid(service.pid_file)
            if pid is None:
                say(f"{service.name:<10} not running")
            else:
                began = time.monotonic()
                clean = stop(pid, service.stop_timeout)
                how = "stopped" if clean else "killed (did not stop in time)"
                say(f"{service.name:<10} {how} in {time.monotonic() - began:.1f}s")
            service.after_stop()
            service.pid_file.unlink(missing_ok=True)
        if wipe:
            # The brokers' folders, and what the mesh keeps in the stack folder: the span
            # store and the indexer's default folder. Named one by one: the stack folder
            # is a setting, and may hold things that are not the stack's.
            mesh = [settings.stack_dir / SPAN_STORE_FOLDER, settings.stack_dir / INDEX_FOLDER]
            for folder in [*(service.root for service in all_services(settings)), *mesh]:
                shutil.rmtree(folder, ignore_errors=True)
            say(f"wiped {settings.stack_dir}")


def status(settings: Settings) -> list[ServiceStatus]:
    """Each service: whether the stack's process runs and answers a real probe."""
    out = []
    for service in all_services(settings):
        pid = read_pid(service.pid_file)
        if pid is None:
            healthy, detail = False, "not running"
        else:
            why = _probe(service)
            healthy, detail = why is None, why or "healthy"
        out.append(
            ServiceStatus(
                service.name,
                settings.host,
                dict(service.ports),
                pid,
                healthy,
                detail,
                str(service.log_file),
            )
        )
    return out
