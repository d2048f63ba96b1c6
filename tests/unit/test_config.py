"""Settings: what a process connects to, read from AGENTFLUX_* variables.

Every test starts from a clean slate: a developer's own AGENTFLUX_* variables or
`.agentflux.env` must not change what these tests see.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.runtime.config import Settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith("AGENTFLUX_"):
            monkeypatch.delenv(name)
    # A stray .agentflux.env in the working directory is then out of reach too.
    monkeypatch.chdir(tmp_path)


def load(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def named_in(excinfo: pytest.ExceptionInfo[ValidationError]) -> str:
    """Where and what each error says, without the echoed input (which repeats every
    name it was given and would make any field look named)."""
    return " | ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in excinfo.value.errors())


PORTS = (
    "kafka_port",
    "kafka_controller_port",
    "rabbitmq_port",
    "rabbitmq_dist_port",
    "rabbitmq_epmd_port",
    "redis_port",
    "memcached_port",
)


def test_defaults_stay_on_loopback_with_distinct_ports() -> None:
    s = load()
    assert s.host == "127.0.0.1"
    ports = [getattr(s, name) for name in PORTS]
    assert len(set(ports)) == len(ports), ports
    assert s.kafka_bootstrap_servers == f"127.0.0.1:{s.kafka_port}"
    assert s.amqp_url == f"amqp://guest:guest@127.0.0.1:{s.rabbitmq_port}/"
    assert s.redis_dsn == f"redis://127.0.0.1:{s.redis_port}/0"
    assert s.memcached_address == ("127.0.0.1", s.memcached_port)
    assert s.tool_task_retry_delays_ms == [1_000, 5_000, 30_000]


def test_default_directories(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    s = load()
    assert s.stack_dir == REPO / ".stack"
    # Outside the checkout, so `make clean` and a fresh clone keep the Kafka download.
    assert s.cache_dir == tmp_path / "cache" / "agentflux"


@pytest.mark.parametrize(
    ("variable", "value", "derived", "expected"),
    [
        ("AGENTFLUX_KAFKA_PORT", "40092", "kafka_bootstrap_servers", "127.0.0.1:40092"),
        ("AGENTFLUX_RABBITMQ_PORT", "40672", "amqp_url", "amqp://guest:guest@127.0.0.1:40672/"),
        ("AGENTFLUX_REDIS_PORT", "40379", "redis_dsn", "redis://127.0.0.1:40379/0"),
        ("AGENTFLUX_MEMCACHED_PORT", "40211", "memcached_address", ("127.0.0.1", 40211)),
    ],
)
def test_env_port_moves_the_derived_address(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, derived: str, expected: object
) -> None:
    monkeypatch.setenv(variable, value)
    s = load()
    assert getattr(s, variable.removeprefix("AGENTFLUX_").lower()) == int(value)
    assert getattr(s, derived) == expected


def test_env_host_moves_every_derived_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTFLUX_HOST", "127.0.0.2")
    s = load()
    assert s.kafka_bootstrap_servers == "127.0.0.2:39092"
    assert s.amqp_url == "amqp://guest:guest@127.0.0.2:35672/"
    assert s.redis_dsn == "redis://127.0.0.2:36379/0"
    assert s.memcached_address == ("127.0.0.2", 31211)


@pytest.mark.parametrize(
    ("url_variable", "url", "port_variable", "derived", "expected"),
    [
        (
            "AGENTFLUX_KAFKA_BOOTSTRAP",
            "kafka-1.internal:9092,kafka-2.internal:9092",
            "AGENTFLUX_KAFKA_PORT",
            "kafka_bootstrap_servers",
            "kafka-1.internal:9092,kafka-2.internal:9092",
        ),
        (
            "AGENTFLUX_RABBITMQ_URL",
            "amqps://agent:secret@mq.internal:5671/prod",
            "AGENTFLUX_RABBITMQ_PORT",
            "amqp_url",
            "amqps://agent:secret@mq.internal:5671/prod",
        ),
        (
            "AGENTFLUX_REDIS_URL",
            "redis://cache.internal:6380/2",
            "AGENTFLUX_REDIS_PORT",
            "redis_dsn",
            "redis://cache.internal:6380/2",
        ),
        (
            "AGENTFLUX_MEMCACHED_SERVERS",
            "mc.internal:11311",
            "AGENTFLUX_MEMCACHED_PORT",
            "memcached_address",
            ("mc.internal", 11311),
        ),
    ],
)
def test_explicit_url_wins_over_the_local_stack(
    monkeypatch: pytest.MonkeyPatch,
    url_variable: str,
    url: str,
    port_variable: str,
    derived: str,
    expected: object,
) -> None:
    monkeypatch.setenv(port_variable, "41000")
    monkeypatch.setenv(url_variable, url)
    assert getattr(load(), derived) == expected


def test_memcached_servers_without_host_uses_the_stack_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENTFLUX_HOST", "127.0.0.3")
    monkeypatch.setenv("AGENTFLUX_MEMCACHED_SERVERS", ":11311")
    assert load().memcached_address == ("127.0.0.3", 11311)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1000,2000", [1000, 2000]), (" 250 , 500 ,", [250, 500]), ("7", [7])],
)
def test_retry_delays_parse_from_a_comma_list(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: list[int]
) -> None:
    monkeypatch.setenv("AGENTFLUX_TOOL_TASK_RETRY_DELAYS_MS", raw)
    assert load().tool_task_retry_delays_ms == expected


def test_env_file_is_read_and_the_environment_beats_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env_file = tmp_path / "local.env"
    env_file.write_text("AGENTFLUX_KAFKA_PORT=40092\nAGENTFLUX_REDIS_PORT=40379\n")
    monkeypatch.setenv("AGENTFLUX_REDIS_PORT", "40380")
    s = Settings(_env_file=env_file)
    assert s.kafka_port == 40092
    assert s.redis_port == 40380


def test_settings_are_frozen() -> None:
    # Derived addresses are cached; a field changed afterwards would leave them stale.
    s = load()
    assert s.kafka_bootstrap_servers.endswith(":39092")
    with pytest.raises(ValidationError):
        s.kafka_port = 40092  # type: ignore[misc]


def _bad(id_: str, field: str, complaint: str, **env: str) -> object:
    return pytest.param(
        {f"AGENTFLUX_{k.upper()}": v for k, v in env.items()}, field, complaint, id=id_
    )


@pytest.mark.parametrize(
    ("env", "field", "complaint"),
    [
        _bad("port-too-high", "kafka_port", "less than or equal to 65535", kafka_port="70000"),
        _bad("port-zero", "redis_port", "greater than or equal to 1", redis_port="0"),
        _bad("port-not-a-number", "memcached_port", "valid integer", memcached_port="eleven"),
        _bad(
            "port-taken-by-default",
            "redis_port and kafka_port",
            "both 39092",
            redis_port="39092",
        ),
        _bad(
            "two-ports-equal",
            "memcached_port and rabbitmq_port",
            "both 41000",
            rabbitmq_port="41000",
            memcached_port="41000",
        ),
        _bad(
            "delay-repeated",
            "tool_task_retry_delays_ms",
            "distinct",
            tool_task_retry_delays_ms="1000,1000",
        ),
        _bad(
            "delay-zero",
            "tool_task_retry_delays_ms",
            "> 0",
            tool_task_retry_delays_ms="1000,0",
        ),
        _bad(
            "delay-negative",
            "tool_task_retry_delays_ms",
            "> 0",
            tool_task_retry_delays_ms="-5",
        ),
        _bad(
            "delay-not-a-number",
            "tool_task_retry_delays_ms",
            "valid integer",
            tool_task_retry_delays_ms="1000,soon",
        ),
        _bad(
            "memcached-without-port",
            "memcached_servers",
            "host:port",
            memcached_servers="mc.internal",
        ),
        _bad(
            "memcached-port-too-high",
            "memcached_servers",
            "host:port",
            memcached_servers="mc.internal:99999",
        ),
        _bad("timeout-zero", "startup_timeout_s", "greater than 0", startup_timeout_s="0"),
    ],
)
def test_bad_values_are_refused_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], field: str, complaint: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as excinfo:
        load()
    said = named_in(excinfo)
    assert field in said
    assert complaint in said
