"""`lifecycle.stop_with_parent` (what `agentflux serve --parent` does): a process tied
to the process that started it gets SIGTERM when that parent is killed outright, and a
parent that is not its parent is refused with a clear error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AGENTFLUX = str(Path(sys.executable).with_name("agentflux"))

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")

# The child says when it is tied, and what ended it.
CHILD = """
import os, signal, sys, time
from services.runtime.lifecycle import stop_with_parent
out = sys.argv[1]
def on_term(*_):
    with open(out, "w") as f:
        f.write("SIGTERM")
    os._exit(0)
signal.signal(signal.SIGTERM, on_term)
stop_with_parent(os.getppid())
open(out + ".tied", "w").close()
time.sleep(120)
"""

# The parent starts the child from its main thread, then waits to be killed.
PARENT = """
import subprocess, sys
child = subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2]])
print(child.pid, flush=True)
sys.stdin.read()
"""


def _until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie its new parent has not reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def test_a_parent_killed_outright_sends_its_child_sigterm(tmp_path: Path) -> None:
    child_py, parent_py = tmp_path / "child.py", tmp_path / "parent.py"
    child_py.write_text(CHILD)
    parent_py.write_text(PARENT)
    out = tmp_path / "ended"
    with subprocess.Popen(
        [sys.executable, str(parent_py), str(child_py), str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as parent:
        try:
            assert parent.stdout is not None
            child = int(parent.stdout.readline())
            _until(Path(f"{out}.tied").exists, "the child to tie itself to its parent")
            assert not out.exists()  # nothing happened to it yet
            parent.send_signal(signal.SIGKILL)
            parent.wait(10)
            _until(out.exists, "the child's SIGTERM")
            assert out.read_text() == "SIGTERM"
            _until(lambda: _gone(child), "the child to exit")
        finally:
            parent.kill()  # a no-op once it is dead


def test_a_pid_that_is_not_the_parent_is_refused() -> None:
    # Not in this process: the prctl would tie pytest to its own parent.
    done = subprocess.run(
        [AGENTFLUX, "serve", "--parent", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "process 1 is not the parent of this process" in done.stderr
    assert "ready" not in done.stdout  # refused before any service started
