"""One typed settings object for every agentflux process.

Every field is read from an `AGENTFLUX_<FIELD>` environment variable (or from the file
named by `AGENTFLUX_ENV_FILE`, default `.agentflux.env`); nothing else in agentflux
reads the environment. `agentflux config` prints the fields, their variables and the
values in force.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["INDEX_FOLDER", "SPAN_STORE_FOLDER", "Settings", "default_stack_dir"]

_CHECKOUT = Path(__file__).resolve().parents[2]
# What the mesh keeps in the stack folder by default (`stack down --wipe` deletes them).
SPAN_STORE_FOLDER = "traces"
INDEX_FOLDER = "index"


def default_stack_dir() -> Path:
    """`.stack/` at the root of a source checkout, else `.stack/` in the working directory."""
    if (_CHECKOUT / "pyproject.toml").is_file():
        return _CHECKOUT / ".stack"
    return Path.cwd() / ".stack"


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "agentflux"


class Settings(BaseSettings):
    """Settings of an agentflux process. Field docs are shown by `agentflux config`."""

    model_config = SettingsConfigDict(
        env_prefix="AGENTFLUX_",
        env_file=os.environ.get("AGENTFLUX_ENV_FILE", ".agentflux.env"),
        extra="ignore",
        frozen=True,
    )

    # -- where the local stack lives ------------------------------------------------
    host: str = Field(
        "127.0.0.1",
        description="Address the local stack binds to and clients connect to. Keep it on loopback.",
    )
    stack_dir: Path = Field(
        default_factory=default_stack_dir,
        description="Data, logs and pid files of the local stack (git-ignored `.stack/`).",
    )
    cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        description="Downloads kept across wipes and checkouts (Kafka jars), outside the repo.",
    )
    startup_timeout_s: float = Field(
        180.0, gt=0, description="Seconds `stack up` waits for one service to become ready."
    )

    # -- Kafka ----------------------------------------------------------------------
    kafka_version: str = Field(
        "4.1.1", description="Apache Kafka version the local stack runs (Maven Central jars)."
    )
    kafka_port: int = Field(39092, ge=1, le=65535, description="Kafka broker (PLAINTEXT) port.")
    kafka_controller_port: int = Field(
        39093, ge=1, le=65535, description="Kafka KRaft controller port."
    )
    kafka_heap_mb: int = Field(512, ge=128, description="Kafka JVM heap cap, in MiB.")
    kafka_partitions: int = Field(
        3, ge=1, description="Partitions of each contract topic created by `stack up`."
    )
    kafka_retention_ms: int = Field(
        30 * 24 * 3600 * 1000,
        ge=-1,
        description="retention.ms of contract topics; long enough to replay (-1 keeps forever).",
    )
    kafka_bootstrap: str = Field(
        "",
        description="Bootstrap servers of an existing cluster; empty means the local stack's.",
    )

    # -- RabbitMQ -------------------------------------------------------------------
    rabbitmq_port: int = Field(35672, ge=1, le=65535, description="RabbitMQ AMQP port.")
    rabbitmq_dist_port: int = Field(
        35673, ge=1, le=65535, description="RabbitMQ Erlang distribution port (rabbitmqctl)."
    )
    rabbitmq_epmd_port: int = Field(
        34369, ge=1, le=65535, description="Port of the local stack's own Erlang port mapper."
    )
    rabbitmq_node: str = Field(
        "agentflux@localhost", description="Erlang node name of the local RabbitMQ."
    )
    rabbitmq_url: str = Field(
        "", description="AMQP URL of an existing broker; empty means the local stack's."
    )
    tool_task_retry_delays_ms: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [1_000, 5_000, 30_000],
        description="Delay tiers of tool-task retries, comma-separated milliseconds.",
    )

    # -- Redis ----------------------------------------------------------------------
    redis_port: int = Field(36379, ge=1, le=65535, description="Redis port.")
    redis_url: str = Field("", description="Redis URL of an existing server; empty means local.")

    # -- Memcached ------------------------------------------------------------------
    memcached_port: int = Field(31211, ge=1, le=65535, description="Memcached port.")
    memcached_memory_mb: int = Field(64, ge=8, description="Memcached memory cap, in MiB.")
    memcached_servers: str = Field(
        "", description="host:port of an existing memcached; empty means the local stack's."
    )

    # -- the mesh (agentflux serve) ---------------------------------------------------
    namespace: str = Field(
        "",
        pattern=r"^([a-z0-9][a-z0-9_-]{0,30}\.)?$",
        description="Prefix (ending in `.`) of every topic, queue, consumer group and Redis "
        "key the services use, so several meshes can share one stack; empty: none.",
    )
    tenant: str = Field(
        "default",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
        description="Tenant of calls that name none (`x-tenant-id`).",
    )
    gateway_port: int = Field(
        50051, ge=1, le=65535, description="gRPC port of the gateway (AgentGateway)."
    )
    gateway_address: str = Field(
        "", description="host:port `agentflux ask` calls; empty: host and gateway_port."
    )
    indexer_port: int = Field(
        50052, ge=1, le=65535, description="gRPC port of the indexer's search service."
    )
    indexer_address: str = Field(
        "", description="host:port the gateway and tools search; empty: host and indexer_port."
    )
    health_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="gRPC health port of a `serve` process without the gateway; 0 picks a "
        "free one (logged).",
    )
    indexer_replica: str = Field(
        "",
        pattern=r"^[A-Za-z0-9_-]{0,64}$",
        description="This indexer's replica name: its own consumer group and index file "
        "(every replica indexes everything); empty: the host name.",
    )
    index_dir: Path | None = Field(
        None, description="Folder of the indexer's SQLite index files; empty: <stack_dir>/index."
    )
    model_provider: str = Field(
        "scripted",
        description="Model provider: `scripted` (offline, deterministic) or `openai` (any "
        "OpenAI-compatible /v1/chat/completions endpoint: see the model_* settings).",
    )
    model_base_url: str = Field(
        "",
        description="Base URL of the `openai` provider's endpoint, up to and including the "
        "version (e.g. http://127.0.0.1:8000/v1); /chat/completions is added.",
    )
    model_name: str = Field("", description="Model the `openai` provider asks for.")
    model_api_key: SecretStr = Field(
        SecretStr(""),
        description="Key the `openai` provider presents (Bearer); empty: none (local servers).",
    )
    model_tenant_api_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='Keys of the `openai` provider per tenant, JSON {"tenant": "key"}; other '
        "tenants use model_api_key.",
    )
    model_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="How long one model request may take, in seconds."
    )
    model_max_retries: int = Field(
        2,
        ge=0,
        le=10,
        description="Retries of a model request that timed out, was rate limited (429, "
        "after its Retry-After) or met a server fault (5xx).",
    )
    model_temperature: float | None = Field(
        None, ge=0, le=2, description="Sampling temperature; unset: the endpoint's default."
    )

    @field_validator("model_base_url")
    @classmethod
    def _check_model_base_url(cls, value: str) -> str:
        # Checked here so a typo fails at start-up, not at a run's first step.
        from urllib.parse import urlsplit

        value = value.strip()
        if not value:
            return value
        parsed = urlsplit(value)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(
                f"{value!r} is not an http(s) URL; set AGENTFLUX_MODEL_BASE_URL to the "
                "endpoint's base, e.g. http://127.0.0.1:8000/v1"
            )
        if parsed.path.rstrip("/").endswith("/chat/completions"):
            raise ValueError(
                f"{value!r} names the chat completions path; set AGENTFLUX_MODEL_BASE_URL "
                "to the base before it, e.g. http://127.0.0.1:8000/v1"
            )
        return value

    @model_validator(mode="after")
    def _check_model(self) -> Settings:
        if self.model_provider.strip().lower() != "openai":
            return self
        missing = [
            f"AGENTFLUX_{name.upper()}"
            for name in ("model_base_url", "model_name")
            if not getattr(self, name).strip()
        ]
        if missing:
            raise ValueError(f"the openai model provider needs {' and '.join(missing)} set")
        blank = sorted(
            t for t, key in self.model_tenant_api_keys.items() if not key.get_secret_value()
        )
        if blank:
            raise ValueError(
                f"model_tenant_api_keys: tenant(s) {', '.join(blank)} have an empty key; give "
                "a key or leave the tenant out (it then uses model_api_key)"
            )
        return self

    run_max_steps: int = Field(
        4, ge=1, le=64, description="Planning steps a run may take (default and cap)."
    )
    run_max_tools_per_step: int = Field(
        8, ge=1, le=256, description="Tool calls one step may fan out to (default and cap)."
    )
    run_max_tool_calls: int = Field(
        16, ge=1, le=4096, description="Tool calls a whole run may make (default and cap)."
    )
    tool_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="How long one tool call may run, in seconds."
    )
    http_get_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts the http_get tool may fetch from, comma-separated; empty: none.",
    )
    mcp_servers: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="MCP servers whose tools agents may call, JSON by server name: "
        '{"files": {"command": ["python", "-m", "x"], "env": {"K": "v"}, "cwd": "/srv"}, '
        '"search": {"url": "http://127.0.0.1:9000/mcp", "headers": {"Authorization": "..."}}} '
        '(either "command" or "url"; optional "timeout_s"); their tools are named '
        "<server>__<tool>.",
    )
    mcp_tool_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="How long one MCP tool call may run, in seconds."
    )
    mcp_connect_timeout_s: float = Field(
        30.0,
        gt=0,
        le=600,
        description="How long starting, initializing and listing one MCP server may take.",
    )

    @field_validator("mcp_servers")
    @classmethod
    def _check_mcp_servers(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        # Checked here so a typo fails every process at start-up. Server names prefix tool
        # names (`<server>__<tool>`, `^[A-Za-z][A-Za-z0-9_-]{0,63}$`): no "__" inside, so
        # the first "__" of a tool name always ends the server's name.
        import re
        from urllib.parse import urlsplit

        def strings(server: str, key: str, given: dict[str, Any]) -> dict[str, SecretStr]:
            raw = given.get(key)
            if raw is None:
                return {}
            if not isinstance(raw, dict) or not all(
                isinstance(k, str) and k and isinstance(v, str) for k, v in raw.items()
            ):
                raise ValueError(f'MCP server {server!r}: "{key}" must map names to strings')
            return {k: SecretStr(v) for k, v in raw.items()}  # values may be credentials

        checked: dict[str, dict[str, Any]] = {}
        for name, raw in value.items():
            if not re.fullmatch(r"[a-z][a-z0-9]*(?:[_-][a-z0-9]+)*", name) or len(name) > 24:
                raise ValueError(
                    f"MCP server name {name!r} is not valid: lower-case letters and digits, "
                    "starting with a letter, single '-' or '_' between them, at most 24 "
                    "characters (it prefixes the names of its tools: <server>__<tool>)"
                )
            unknown = sorted(set(raw) - {"command", "env", "cwd", "url", "headers", "timeout_s"})
            if unknown:
                raise ValueError(f"MCP server {name!r}: unknown key(s) {', '.join(unknown)}")
            has_command, has_url = raw.get("command") is not None, raw.get("url") is not None
            if has_command == has_url:
                raise ValueError(
                    f'MCP server {name!r}: give either "command" (argv of a stdio server) or '
                    f'"url" (a streamable HTTP endpoint), {"not both" if has_url else "one"}'
                )
            server: dict[str, Any] = {}
            if has_command:
                argv = raw["command"]
                if (
                    not isinstance(argv, list)
                    or not argv
                    or not all(isinstance(a, str) for a in argv)
                    or not argv[0].strip()
                ):
                    raise ValueError(
                        f'MCP server {name!r}: "command" must be a non-empty list of strings '
                        '(argv, run without a shell), e.g. ["python", "-m", "server"]'
                    )
                if "headers" in raw:
                    raise ValueError(f'MCP server {name!r}: "headers" go with "url" only')
                cwd = raw.get("cwd")
                if cwd is not None and (not isinstance(cwd, str) or not cwd):
                    raise ValueError(f'MCP server {name!r}: "cwd" must be a folder path')
                server |= {
                    "command": list(argv),
                    "env": strings(name, "env", raw),
                    "cwd": cwd,
                }
            else:
                url = raw["url"]
                parts = urlsplit(url) if isinstance(url, str) else None
                if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
                    raise ValueError(
                        f'MCP server {name!r}: "url" must be an http(s) URL, e.g. '
                        f"http://127.0.0.1:9000/mcp, not {url!r}"
                    )
                if "env" in raw or "cwd" in raw:
                    raise ValueError(f'MCP server {name!r}: "env" and "cwd" go with "command" only')
                server |= {"url": url, "headers": strings(name, "headers", raw)}
            timeout = raw.get("timeout_s")
            if timeout is not None and (
                isinstance(timeout, bool)
                or not isinstance(timeout, int | float)
                or not 0 < timeout <= 3600
            ):
                raise ValueError(f'MCP server {name!r}: "timeout_s" must be seconds in (0, 3600]')
            server["timeout_s"] = None if timeout is None else float(timeout)
            checked[name] = server
        return checked

    stream_retention_s: int = Field(
        3600, ge=1, description="How long a finished run's events can be replayed, seconds."
    )
    run_retention_s: int = Field(
        7 * 86400, ge=60, description="How long a run's record is kept, in seconds."
    )
    request_id_ttl_s: int = Field(
        86400, ge=1, description="How long a Submit request_id returns the same run, seconds."
    )
    memory_ttl_s: int = Field(
        3600, ge=1, description="Lifetime of a conversation's short-lived memory, seconds."
    )
    cache_ttl_s: int = Field(
        300, ge=1, description="Lifetime of Memcached copies (templates, tool metadata, flags)."
    )
    feature_flags: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Feature flags that are on, comma-separated (the source Memcached "
        "caches); `capture_content`: prompts and answers as span attributes.",
    )
    lease_s: float = Field(
        10.0, gt=0, description="Lease of a consumer's claim on a message, renewed while it works."
    )
    grace_s: float = Field(
        10.0, ge=0, description="Seconds in-flight work may finish after SIGTERM."
    )
    worker_prefetch: int = Field(
        16, ge=1, le=1000, description="Tool tasks one worker process runs at once."
    )
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "auto",
        description="Event loop of `agentflux serve` and `demo`: `uvloop` (libuv, less CPU "
        "per message), `asyncio` (the standard library's), or `auto`: uvloop when "
        "installed, else asyncio.",
    )

    # -- the gateway's edge -------------------------------------------------------------
    auth: Literal["required", "off"] = Field(
        "required",
        description="`required`: every call presents an API key (`authorization: Bearer` or "
        "`x-api-key`) that names its tenant; `off`: no keys, `x-tenant-id` or `tenant`.",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Keys from settings, comma-separated `tenant:sha256-hex-of-key` "
        "(hashes, never keys), beside those `agentflux tenants add` stores in Redis.",
    )
    api_key: SecretStr = Field(
        SecretStr(""),
        description="The key `agentflux ask` presents (`agentflux tenants add` makes one); "
        "`agentflux config` shows it masked.",
    )
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate of the gateway; set with the key to serve TLS only."
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of the gateway.")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA that client certificates must chain to (mutual TLS)."
    )
    tls_ca_file: Path | None = Field(
        None, description="PEM CA `agentflux ask` trusts for the gateway (TLS when set)."
    )
    tls_client_cert_file: Path | None = Field(
        None, description="PEM certificate `agentflux ask` presents (mutual TLS)."
    )
    tls_client_key_file: Path | None = Field(
        None, description="PEM private key of `agentflux ask`'s certificate."
    )
    rate_limit: int = Field(
        600, ge=1, description="Calls one tenant may make per rate window (sliding)."
    )
    rate_window_s: int = Field(60, ge=1, le=86400, description="The rate window, in seconds.")
    max_runs_in_flight: int = Field(
        100, ge=1, description="Runs one tenant may have unfinished at once."
    )
    tenant_token_budget: int = Field(
        2_000_000, ge=1, description="Model tokens one tenant may spend per budget period."
    )
    budget_period_s: int = Field(
        86400, ge=60, description="The tenant token budget's period, in seconds."
    )
    run_max_tokens: int = Field(
        200_000, ge=1, description="Model tokens one run may spend (default and cap)."
    )
    max_request_bytes: int = Field(
        65536, ge=1024, le=16 * 1024 * 1024, description="Largest request the gateway reads."
    )
    approval_tools: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Tools whose calls wait for a person's approval, comma-separated.",
    )
    approval_timeout_s: int = Field(
        3600, ge=1, description="How long a run waits for an approval before it fails."
    )
    cancel_deadline_s: float = Field(
        5.0, gt=0, description="How long a running tool has to stop after its run is cancelled."
    )

    # -- tracing --------------------------------------------------------------------
    span_store: bool = Field(
        True,
        description="Append finished spans to `<stack_dir>/traces/` for `agentflux trace`.",
    )
    otlp_endpoint: str = Field(
        "",
        validation_alias=AliasChoices("AGENTFLUX_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        description="OTLP/gRPC collector (host:port or URL) to export spans to; "
        "`OTEL_EXPORTER_OTLP_ENDPOINT` when unset; empty exports none.",
    )
    trace_sample_ratio: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="Share of new traces recorded (0..1), parent-based: a call or message "
        "that arrives with trace context follows its sampled flag, so a trace is whole "
        "or absent; a sampled-out run creates no spans anywhere.",
    )
    service_namespace: str = Field(
        "",
        validation_alias=AliasChoices("AGENTFLUX_SERVICE_NAMESPACE", "OTEL_SERVICE_NAME"),
        description="`service.namespace` of every span (`OTEL_SERVICE_NAME` when unset): "
        "tells this deployment's services apart; `service.name` stays the service's own.",
    )

    @model_validator(mode="before")
    @classmethod
    def _split_lists(cls, data: Any) -> Any:
        lists = (
            "tool_task_retry_delays_ms",
            "http_get_allowed_hosts",
            "feature_flags",
            "api_keys",
            "approval_tools",
        )
        for name in lists:
            raw = data.get(name) if isinstance(data, dict) else None
            if isinstance(raw, str):
                # Items stay strings: pydantic converts each and names the field (and
                # the position) of one that is not valid.
                data[name] = [p.strip() for p in raw.split(",") if p.strip()]
        return data

    @field_validator("memcached_servers")
    @classmethod
    def _check_memcached_servers(cls, value: str) -> str:
        # Checked here so a typo fails at start-up, not at the first cache call.
        if value:
            _, sep, port = value.rpartition(":")
            if not (sep and port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
                raise ValueError(f"{value!r} is not host:port (port 1-65535)")
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        delays = self.tool_task_retry_delays_ms
        if not delays or any(d <= 0 for d in delays) or len(set(delays)) != len(delays):
            raise ValueError(
                "tool_task_retry_delays_ms: give one or more distinct delays, each > 0 ms"
            )
        ports = {
            "gateway_port": self.gateway_port,
            "indexer_port": self.indexer_port,
            "kafka_port": self.kafka_port,
            "kafka_controller_port": self.kafka_controller_port,
            "rabbitmq_port": self.rabbitmq_port,
            "rabbitmq_dist_port": self.rabbitmq_dist_port,
            "rabbitmq_epmd_port": self.rabbitmq_epmd_port,
            "redis_port": self.redis_port,
            "memcached_port": self.memcached_port,
        }
        seen: dict[int, str] = {}
        for name, port in ports.items():
            if port in seen:
                raise ValueError(f"{name} and {seen[port]} are both {port}; give each its own port")
            seen[port] = name
        return self

    # Connection targets: an explicit URL wins, else the local stack's address.
    @property
    def span_store_dir(self) -> Path | None:
        """Folder of the local span store, or None when it is off."""
        return self.stack_dir / SPAN_STORE_FOLDER if self.span_store else None

    @cached_property
    def gateway_target(self) -> str:
        """host:port of the gateway clients call."""
        return self.gateway_address or f"{self.host}:{self.gateway_port}"

    @cached_property
    def indexer_target(self) -> str:
        """host:port of the indexer's search service."""
        return self.indexer_address or f"{self.host}:{self.indexer_port}"

    @cached_property
    def index_folder(self) -> Path:
        """Folder of the indexer's SQLite files."""
        return self.index_dir or self.stack_dir / INDEX_FOLDER

    @cached_property
    def kafka_bootstrap_servers(self) -> str:
        """Bootstrap servers clients use."""
        return self.kafka_bootstrap or f"{self.host}:{self.kafka_port}"

    @cached_property
    def amqp_url(self) -> str:
        """AMQP URL clients use."""
        return self.rabbitmq_url or f"amqp://guest:guest@{self.host}:{self.rabbitmq_port}/"

    @cached_property
    def redis_dsn(self) -> str:
        """Redis URL clients use."""
        return self.redis_url or f"redis://{self.host}:{self.redis_port}/0"

    @cached_property
    def memcached_address(self) -> tuple[str, int]:
        """(host, port) of the memcached server clients use."""
        if not self.memcached_servers:
            return (self.host, self.memcached_port)
        host, _, port = self.memcached_servers.rpartition(":")
        return (host or self.host, int(port))
