"""The event loop a service runs on (`services.runtime.lifecycle.run`): the setting's
three values, and a clear error for a loop that cannot be had."""

from __future__ import annotations

import asyncio
import gc
import sys
import weakref

import pytest

from services.runtime import lifecycle


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_auto_runs_on_uvloop_where_it_is_installed() -> None:
    pytest.importorskip("uvloop")
    name, factory = lifecycle.loop_factory("auto")
    assert name.startswith("uvloop ")
    assert factory is not None
    assert lifecycle.run(_loop_module(), "auto").startswith("uvloop")


def test_asyncio_runs_on_the_standard_library_loop() -> None:
    assert lifecycle.loop_factory("asyncio") == ("asyncio", None)
    assert lifecycle.run(_loop_module(), "asyncio").startswith("asyncio")


def test_auto_falls_back_to_asyncio_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert lifecycle.loop_factory("auto") == ("asyncio", None)
    assert lifecycle.run(_loop_module(), "auto").startswith("asyncio")


def test_asking_for_uvloop_without_it_says_how_to_go_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)
    main = _loop_module()
    with pytest.raises(lifecycle.EventLoopError, match="AGENTFLUX_EVENT_LOOP=asyncio"):
        lifecycle.run(main, "uvloop")
    # Closed, not left for the garbage collector to report as never awaited.
    assert main.cr_frame is None


def test_an_unknown_loop_is_refused() -> None:
    with pytest.raises(lifecycle.EventLoopError, match="choose auto, uvloop or asyncio"):
        lifecycle.loop_factory("trio")


def test_the_loop_is_closed_after_its_main() -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    async def main() -> int:
        loops.append(asyncio.get_running_loop())
        return 7

    assert lifecycle.run(main(), "auto") == 7
    assert loops[0].is_closed()


class _Node:
    """A container the cyclic collector tracks."""

    def __init__(self) -> None:
        self.other: _Node | None = None


def test_the_startup_heap_is_collected_then_frozen() -> None:
    garbage = _Node()
    garbage.other = _Node()
    garbage.other.other = garbage  # a cycle: only the collector reclaims it
    gone = weakref.ref(garbage)
    del garbage
    kept = _Node()
    try:
        frozen = lifecycle.freeze_startup_heap()
        assert gone() is None  # start-up's garbage was collected first, not frozen
        # Frozen objects are still freed when their last reference goes: the count only
        # says how many were frozen then.
        assert frozen > 0
        # Out of the generations a full collection walks, and still alive.
        assert not any(o is kept for o in gc.get_objects())
        assert isinstance(kept, _Node)
        # Objects made afterwards are collected as ever.
        later = _Node()
        later.other = later
        later_ref = weakref.ref(later)
        del later
        gc.collect()
        assert later_ref() is None
    finally:
        gc.unfreeze()  # the rest of this test process collects as before
