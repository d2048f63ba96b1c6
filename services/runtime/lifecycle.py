"""Process lifecycle: SIGTERM and SIGINT become a graceful stop.

Consumers run until an `asyncio.Event` is set and then shut down in order (stop taking
work, finish or hand back in-flight work within their grace period, commit, close). A
service's main wires the signals to that event here, so `kill -TERM` (what systemd,
Kubernetes and `agentflux` send first) drains instead of killing work mid-way. A second
signal while draining is left to the default action, so an operator can still insist."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Iterable

__all__ = ["stop_on_signals"]

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
