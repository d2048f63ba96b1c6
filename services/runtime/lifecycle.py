"""Process lifecycle: the event loop a service runs on, and SIGTERM and SIGINT as a
graceful stop.

Consumers run until an `asyncio.Event` is set and then shut down in order (stop taking
work, finish or hand back in-flight work within their grace period, commit, close). A
service's main wires the signals to that event here, so `kill -TERM` (what systemd,
Kubernetes and `agentflux` send first) drains instead of killing work mid-way. A second
signal while draining is left to the default action, so an operator can still insist."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

__all__ = [
    "EventLoopError",
    "ParentError",
    "freeze_startup_heap",
    "loop_factory",
    "run",
    "stop_on_signals",
    "stop_with_parent",
]

T = TypeVar("T")

log = logging.getLogger(__name__)


def stop_on_signals(
    stop: asyncio.Event,
    signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> None:
    """Sets `stop` on the first of `signals`; the next one kills the process as usual.

    Must be called from the thread running the event loop (the main thread)."""
    loop = asyncio.get_running_loop()
    chosen = list(signals)

    def first(sig: signal.Signals) -> None:
        log.info("%s: stopping gracefully (send it again to stop at once)", sig.name)
        stop.set()
        for s in chosen:
            loop.remove_signal_handler(s)

    for sig in chosen:
        loop.add_signal_handler(sig, first, sig)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class ParentError(RuntimeError):
    """This process cannot be tied to the parent it was given."""


def stop_with_parent(parent: int) -> None:
    """Has the kernel send this process SIGTERM when `parent`, the process that started
    it, dies, whatever kills it (SIGKILL included). For a process started as someone's
    child (`agentflux demo`'s mesh, a bench's, a script's), which would otherwise run on
    alone once its parent is killed: nothing else tells it, as it may never write to the
    pipe its parent held. The SIGTERM is handled as any other (`stop_on_signals`: drain).

    Linux only (`prctl(PR_SET_PDEATHSIG)`). The kernel sends the signal when the *thread*
    that started this process ends, so the parent must start it from a thread that lives
    as long as the parent does (its main thread). Call it early: a parent that is gone
    by then was reported by no signal, and is found here as a `ParentError`, as is a
    `parent` that is not this process's parent."""
    if not sys.platform.startswith("linux"):
        raise ParentError("stopping with the parent needs Linux (prctl PR_SET_PDEATHSIG)")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise ParentError(f"prctl(PR_SET_PDEATHSIG): {os.strerror(ctypes.get_errno())}")
    # Checked after the prctl: a parent that dies from here on sends the signal, one
    # that died before has left this process to another parent.
    if os.getppid() != parent:
        raise ParentError(
            f"process {parent} is not the parent of this process (it exited, or never was)"
        )


class EventLoopError(RuntimeError):
    """The event loop the settings ask for cannot be had here."""


def loop_factory(choice: str) -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    """The loop `choice` names ("auto", "uvloop" or "asyncio"): its name as logged, and
    a factory for `asyncio.Runner` (None: the standard library's loop)."""
    if choice == "asyncio":
        return "asyncio", None
    if choice not in ("auto", "uvloop"):
        raise EventLoopError(f"event_loop {choice!r}: choose auto, uvloop or asyncio")
    try:
        uvloop: Any = importlib.import_module("uvloop")
    except ImportError:
        if choice == "uvloop":
            raise EventLoopError(
                "event_loop uvloop: uvloop is not installed here (`pip install uvloop`, "
                "Linux and macOS only); AGENTFLUX_EVENT_LOOP=asyncio runs without it"
            ) from None
        return "asyncio", None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return f"uvloop {uvloop.__version__}", factory


def run(main: Coroutine[Any, Any, T], choice: str = "auto") -> T:
    """Runs `main` to completion on the loop `choice` names (`loop_factory`), as
    `asyncio.run` does: the loop is closed after its async generators and default
    executor are shut down."""
    try:
        name, factory = loop_factory(choice)
    except EventLoopError:
        main.close()  # never awaited: say nothing about it
        raise
    log.info("event loop: %s", name)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def freeze_startup_heap() -> int:
    """Collects the garbage start-up left, then takes every object alive now out of the
    cyclic collector's scans (`gc.freeze`); returns how many that is.

    A started service holds some 100,000 objects that live as long as the process
    (modules, descriptors, clients, the telemetry pipeline). Every full collection walked
    all of them: about 100 ms of CPU each on the development machine, a pause in whatever
    run was in flight, every 150 or so runs. Frozen, they are no longer walked; the
    collector still sees every object made after, cycles among them included. What the
    frozen objects leave as cyclic garbage later is not reclaimed, which for objects made
    to live as long as the process is next to nothing."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
