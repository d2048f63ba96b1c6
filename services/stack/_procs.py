"""Processes of the local stack: start detached, remember by pid file, stop by group.

A pid file holds the pid and the process start time (from /proc), so a pid reused
by an unrelated process after a reboot or crash is never mistaken for ours."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["is_alive", "port_open", "read_pid", "spawn", "stop", "tail"]


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) may contain spaces; fields after its closing paren are fixed.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # exited, not yet reaped: as good as gone
        return None
    return fields[19]


def read_pid(pid_file: Path) -> int | None:
    """The pid recorded in `pid_file` if that very process is still running."""
    try:
        pid_s, started = pid_file.read_text().split()
        pid = int(pid_s)
    except (OSError, ValueError):
        return None
    return pid if _start_time(pid) == started else None


def is_alive(pid: int) -> bool:
    """Whether `pid` is running (zombies count as gone)."""
    return _start_time(pid) is not None


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log_file: Path,
    pid_file: Path,
) -> int:
    """Starts `argv` in a session of its own (so `stop` can signal the whole group and
    it outlives the CLI), output appended to `log_file`; records it in `pid_file`.

    posix_spawn rather than Popen: the stack is not this process's to wait for."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log_file), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    pid = os.posix_spawnp(argv[0], list(argv), dict(env), file_actions=actions, setsid=True)
    pid_file.write_text(f"{pid} {_start_time(pid) or '0'}\n")
    return pid


def stop(pid: int, timeout: float) -> bool:
    """SIGTERM to the process group, SIGKILL after `timeout`. True if it stopped in time.

    Waits for every process of the group, not only its leader: a helper that outlives
    the leader (or ignores SIGTERM) is killed too, never left running on its own."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(pid)
            if not _group_alive(pid):
                return sig == signal.SIGTERM
            time.sleep(0.1)
    return False


def _group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` still runs (zombies count as gone)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited while we looked
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def _reap(pid: int) -> None:
    # When the stack was started by this same process the child must be reaped here.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log yet)"
    return "\n".join(text.rstrip().splitlines()[-lines:])
