"""`agentflux stack` as a user runs it: on the shared local stack, and on isolated
stacks in a temporary folder with ports of their own (for the failure paths)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from services.runtime.config import Settings

pytestmark = pytest.mark.integration

AGENTFLUX = str(Path(sys.executable).with_name("agentflux"))
SERVICES = ["kafka", "rabbitmq", "redis", "memcached"]
PORT_FIELDS = [
    "kafka_port",
    "kafka_controller_port",
    "rabbitmq_port",
    "rabbitmq_dist_port",
    "rabbitmq_epmd_port",
    "redis_port",
    "memcached_port",
]


def agentflux(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AGENTFLUX, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
        cwd=cwd,
    )


def status_rows(stdout: str) -> dict[str, list[str]]:
    """SERVICE -> [state, pid, address, detail...] from `stack status` output."""
    rows = {}
    for line in stdout.splitlines():
        fields = line.split()
        if fields and fields[0] in SERVICES:
            rows[fields[0]] = fields[1:]
    return rows


def test_status_lists_four_healthy_services_with_ports(settings: Settings) -> None:
    done = agentflux("stack", "status")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = status_rows(done.stdout)
    assert sorted(rows) == sorted(SERVICES)
    expected_ports = {
        "kafka": [settings.kafka_port, settings.kafka_controller_port],
        "rabbitmq": [settings.rabbitmq_port, settings.rabbitmq_dist_port],
        "redis": [settings.redis_port],
        "memcached": [settings.memcached_port],
    }
    for name, (state, pid, address, *detail) in rows.items():
        assert state == "healthy", (name, done.stdout)
        assert detail == ["healthy"], (name, done.stdout)
        assert int(pid) > 0
        assert address.startswith(f"{settings.host}:")
        ports = [int(p) for p in re.findall(r"(\d+)\(", address)]
        assert ports == expected_ports[name], (name, address)


def test_second_up_is_idempotent_and_quick(settings: Settings) -> None:
    before = status_rows(agentflux("stack", "status").stdout)
    began = time.monotonic()
    done = agentflux("stack", "up", timeout=30)
    took = time.monotonic() - began
    assert done.returncode == 0, done.stdout + done.stderr
    assert took < 15, f"a no-op `stack up` took {took:.1f}s"
    for name in SERVICES:
        pid = before[name][1]
        assert re.search(rf"^{name}\s+already running \(pid {pid}\)$", done.stdout, re.M), (
            done.stdout
        )
    assert "starting on" not in done.stdout
    assert "0 new" in done.stdout  # topics existed already
    after = status_rows(agentflux("stack", "status").stdout)
    assert {n: r[1] for n, r in after.items()} == {n: r[1] for n, r in before.items()}
    assert all(r[0] == "healthy" for r in after.values())


# -- isolated stacks --------------------------------------------------------------


@pytest.fixture
def free_ports() -> dict[str, int]:
    """Distinct ports nothing listens on, one per port setting."""
    with ExitStack() as held:
        ports = {}
        for name in PORT_FIELDS:
            s = held.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports[name] = s.getsockname()[1]
    return ports  # all released again, still free


@pytest.fixture
def isolated(tmp_path: Path, free_ports: dict[str, int]) -> Iterator[dict[str, str]]:
    """Environment of a stack of its own: folder under tmp_path, ports nobody uses.
    Whatever an `up` in it started is stopped (`stack down`, same env) at the end."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFLUX_")}
    env["AGENTFLUX_ENV_FILE"] = str(tmp_path / "no.env")
    env["AGENTFLUX_STACK_DIR"] = str(tmp_path / "stack")
    for name, port in free_ports.items():
        env[f"AGENTFLUX_{name.upper()}"] = str(port)
    yield env
    if (tmp_path / "stack").exists():
        done = agentflux("stack", "down", env=env, cwd=tmp_path, timeout=90)
        assert done.returncode == 0, done.stdout + done.stderr
        assert not list((tmp_path / "stack").glob("*/*.pid"))


@pytest.mark.parametrize(
    ("field", "role"), [("kafka_port", "broker"), ("kafka_controller_port", "controller")]
)
def test_up_fails_when_a_port_is_taken(
    tmp_path: Path, isolated: dict[str, str], field: str, role: str
) -> None:
    port = int(isolated[f"AGENTFLUX_{field.upper()}"])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        done = agentflux("stack", "up", env=isolated, cwd=tmp_path, timeout=60)

    assert done.returncode != 0
    log_file = tmp_path / "stack" / "kafka" / "kafka.log"
    assert f"kafka: port 127.0.0.1:{port} ({role}) is taken" in done.stderr, done.stderr
    assert f"AGENTFLUX_{field.upper()}" in done.stderr
    assert f"Log: {log_file}" in done.stderr
    # It failed before starting anything: no service of the isolated stack runs.
    assert not list((tmp_path / "stack").glob("*/*.pid"))
    status = agentflux("stack", "status", env=isolated, cwd=tmp_path)
    assert status.returncode == 1
    assert all(r[0] == "down" for r in status_rows(status.stdout).values())


def test_status_of_an_empty_stack_says_not_running(
    tmp_path: Path, isolated: dict[str, str]
) -> None:
    done = agentflux("stack", "status", env=isolated, cwd=tmp_path)
    assert done.returncode == 1
    rows = status_rows(done.stdout)
    assert sorted(rows) == sorted(SERVICES)
    for name, (state, pid, _address, *detail) in rows.items():
        assert (state, pid, " ".join(detail)) == ("down", "-", "not running"), name


def test_invalid_config_exits_2_naming_the_variable(
    tmp_path: Path, isolated: dict[str, str]
) -> None:
    env = {**isolated, "AGENTFLUX_REDIS_PORT": "70000"}
    done = agentflux("stack", "status", env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert "AGENTFLUX_REDIS_PORT" in done.stderr
    assert "65535" in done.stderr  # says what is allowed
    assert not (tmp_path / "stack").exists()  # nothing was touched


def test_down_wipe_deletes_the_stack_data_and_only_that(
    tmp_path: Path, isolated: dict[str, str]
) -> None:
    stack = tmp_path / "stack"
    made = [
        stack / "kafka" / "data" / "meta.properties",
        stack / "redis" / "data" / "dump.rdb",
        stack / "traces" / "spans-20260101.jsonl",  # the span store
        stack / "index" / "answers.db",  # the indexer's default folder
    ]
    for path in made:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    theirs = stack / "notes.txt"  # the folder is a setting: not everything in it is ours
    theirs.write_text("keep me")

    done = agentflux("stack", "down", "--wipe", env=isolated, cwd=tmp_path, timeout=60)

    assert done.returncode == 0, done.stdout + done.stderr
    assert f"wiped {stack}" in done.stdout + done.stderr
    for path in made:
        assert not path.parent.exists(), path
    assert theirs.read_text() == "keep me"
