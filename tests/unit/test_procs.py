"""services.stack._procs with real processes: spawn, pid files, group stop, log tails."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.stack import _procs

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name, or None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _running(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def _group(pgid: int) -> list[int]:
    """Running (non-zombie) members of process group `pgid`."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and fields[0] != "Z" and fields[2] == str(pgid):
                out.append(int(entry.name))
    return out


def _wait_for(predicate: object, timeout: float = 5.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@pytest.fixture
def spawned(tmp_path: Path) -> Iterator[list[int]]:
    """Pids (process groups) a test spawns; any still running are killed at the end."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def spawn(tmp_path: Path, spawned: list[int], *argv: str, name: str = "svc") -> int:
    pid = _procs.spawn(
        list(argv),
        env=ENV,
        log_file=tmp_path / name / f"{name}.log",
        pid_file=tmp_path / f"{name}.pid",
    )
    spawned.append(pid)
    return pid


def test_spawn_records_a_detached_process(tmp_path: Path, spawned: list[int]) -> None:
    pid = spawn(tmp_path, spawned, "sleep", "30")
    assert _procs.read_pid(tmp_path / "svc.pid") == pid
    assert _procs.is_alive(pid)
    # A session of its own: signals to our group do not reach it, and stop() can
    # signal its whole group.
    assert os.getsid(pid) == pid
    assert os.getpgid(pid) == pid
    assert os.getsid(pid) != os.getsid(0)
    recorded_pid, started = (tmp_path / "svc.pid").read_text().split()
    assert int(recorded_pid) == pid
    assert started == (_stat(pid) or [])[19]


def test_spawn_sends_stdout_and_stderr_to_the_log(tmp_path: Path, spawned: list[int]) -> None:
    pid = spawn(tmp_path, spawned, "sh", "-c", "echo to-stdout; echo to-stderr >&2")
    os.waitpid(pid, 0)
    spawned.remove(pid)
    log = (tmp_path / "svc" / "svc.log").read_text()
    assert "==== " in log
    assert "sh -c echo to-stdout" in log  # the header names the command
    assert log.index("to-stdout") < log.index("to-stderr")
    # A second start appends, so an earlier run's output is kept for diagnosis.
    pid = spawn(tmp_path, spawned, "sh", "-c", "echo second-run")
    os.waitpid(pid, 0)
    spawned.remove(pid)
    log = (tmp_path / "svc" / "svc.log").read_text()
    assert "to-stderr" in log
    assert log.count("==== ") == 2
    assert log.rstrip().endswith("second-run")


def test_pid_file_with_another_start_time_is_not_ours(tmp_path: Path, spawned: list[int]) -> None:
    pid = spawn(tmp_path, spawned, "sleep", "30")
    pid_file = tmp_path / "svc.pid"
    _, started = pid_file.read_text().split()
    # Same pid, different start time: a reused pid, some other process.
    pid_file.write_text(f"{pid} {int(started) + 1}\n")
    assert _procs.read_pid(pid_file) is None
    pid_file.write_text(f"{os.getpid()} {started}\n")
    assert _procs.read_pid(pid_file) is None


@pytest.mark.parametrize("content", ["", "garbage", "12 34 56", "abc 123"])
def test_unreadable_pid_file_means_not_running(tmp_path: Path, content: str) -> None:
    pid_file = tmp_path / "svc.pid"
    pid_file.write_text(content)
    assert _procs.read_pid(pid_file) is None
    assert _procs.read_pid(tmp_path / "missing.pid") is None


def test_exited_process_is_not_running(tmp_path: Path, spawned: list[int]) -> None:
    pid = spawn(tmp_path, spawned, "true")
    # Not reaped yet: a zombie, which counts as gone.
    _wait_for(lambda: (_stat(pid) or ["Z"])[0] == "Z")
    assert not _procs.is_alive(pid)
    assert _procs.read_pid(tmp_path / "svc.pid") is None


def test_stop_terminates_the_whole_group(tmp_path: Path, spawned: list[int]) -> None:
    pid = spawn(tmp_path, spawned, "sh", "-c", "sleep 30 & sleep 30; wait")
    _wait_for(lambda: len(_group(pid)) == 3)  # sh and both sleeps
    members = _group(pid)

    assert _procs.stop(pid, timeout=5) is True
    assert not any(_running(m) for m in members)
    assert _group(pid) == []
    assert _procs.read_pid(tmp_path / "svc.pid") is None


def test_stop_kills_group_members_that_ignore_sigterm(tmp_path: Path, spawned: list[int]) -> None:
    # The leader exits on SIGTERM at once; a helper in its group ignores it.
    script = "(trap '' TERM; exec sleep 30) & exec sleep 30"
    pid = spawn(tmp_path, spawned, "sh", "-c", script)
    _wait_for(lambda: len(_group(pid)) == 2)
    members = _group(pid)

    began = time.monotonic()
    assert _procs.stop(pid, timeout=0.5) is False  # needed SIGKILL
    assert time.monotonic() - began < 5
    assert not any(_running(m) for m in members)
    assert _group(pid) == []


def test_stop_of_a_gone_process_is_clean(tmp_path: Path, spawned: list[int]) -> None:
    pid = spawn(tmp_path, spawned, "true")
    os.waitpid(pid, 0)
    spawned.remove(pid)
    assert _procs.stop(pid, timeout=1) is True


def test_port_open(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert _procs.port_open("127.0.0.1", port)
    assert not _procs.port_open("127.0.0.1", port)


def test_tail_returns_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(1, 101)) + "\n\n")
    assert _procs.tail(log, lines=3) == "line 98\nline 99\nline 100"
    assert _procs.tail(log).splitlines() == [f"line {i}" for i in range(86, 101)]
    assert _procs.tail(tmp_path / "missing.log") == "(no log yet)"
    log.write_bytes(b"ok\n\xff\xfe broken utf-8\n")
    assert _procs.tail(log, lines=1) == "\ufffd\ufffd broken utf-8"
