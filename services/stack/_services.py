"""The four services of the local stack: how each is configured, started and probed.

Each service lives in `<stack_dir>/<name>/` (data/, <name>.log, <name>.pid) and binds
only to `settings.host`. A readiness probe does real work on the service (a produce
and consume on Kafka, a queue declare on RabbitMQ, PING, a memcached version call),
not just a port check."""

from __future__ import annotations

import asyncio
import base64
import getpass
import os
import subprocess
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import aio_pika
import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from pymemcache.client.base import Client as MemcacheClient

from services.runtime.config import Settings
from services.runtime.topology import TopicSpec, ensure_kafka_topics
from services.stack._errors import StackError
from services.stack._install import DEPLOY_DIR, Say, ensure_kafka_jars, java_major

__all__ = [
    "Kafka",
    "Memcached",
    "RabbitMQ",
    "Redis",
    "Service",
    "all_services",
    "kafka_cluster_id",
]

_READY_TOPIC = "__agentflux_ready"


class Service(ABC):
    """One process of the local stack."""

    name: str
    # Commands it needs on the machine (installed by `ensure_commands`).
    commands: tuple[str, ...]
    # Settings field of each port it binds, by role; the first is the one clients use.
    port_fields: ClassVar[dict[str, str]]
    stop_timeout: float = 20.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.stack_dir / self.name
        self.data = self.root / "data"
        self.log_file = self.root / f"{self.name}.log"
        self.pid_file = self.root / f"{self.name}.pid"

    @property
    def ports(self) -> dict[str, int]:
        """Ports it binds, by role; the first is the one clients use."""
        return {role: getattr(self.settings, field) for role, field in self.port_fields.items()}

    @property
    def port(self) -> int:
        """The port clients connect to."""
        return next(iter(self.ports.values()))

    def prepare(self, say: Say) -> None:
        """Writes configuration and initialises storage before a start."""
        self.data.mkdir(parents=True, exist_ok=True)

    @abstractmethod
    def argv(self) -> list[str]:
        """The command line that runs the service in the foreground."""

    def env(self) -> dict[str, str]:
        """Environment of the service process."""
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}

    @abstractmethod
    def probe(self) -> None:
        """Raises unless the service does real work now."""

    def after_stop(self) -> None:  # noqa: B027 - most services leave nothing behind
        """Cleans up helpers the service left behind."""


class Redis(Service):
    """Redis with AOF on: it holds idempotency records that must survive a restart."""

    name = "redis"
    commands = ("redis-server",)

    port_fields: ClassVar[dict[str, str]] = {"redis": "redis_port"}

    def argv(self) -> list[str]:
        s = self.settings
        return [
            "redis-server",
            "--bind", s.host,
            "--port", str(s.redis_port),
            "--dir", str(self.data),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--protected-mode", "yes",
            "--daemonize", "no",
        ]  # fmt: skip

    def probe(self) -> None:
        client = redis.Redis(
            host=self.settings.host, port=self.settings.redis_port, socket_timeout=2
        )
        try:
            client.ping()
            if client.config_get("appendonly").get("appendonly") != "yes":
                raise StackError("redis is up but AOF is off")
        finally:
            client.close()


class Memcached(Service):
    """Memcached for hot disposable reads; UDP off (amplification risk, unused)."""

    name = "memcached"
    commands = ("memcached",)
    stop_timeout = 5.0

    port_fields: ClassVar[dict[str, str]] = {"memcached": "memcached_port"}

    def argv(self) -> list[str]:
        s = self.settings
        argv = [
            "memcached",
            "-l", s.host,
            "-p", str(s.memcached_port),
            "-U", "0",
            "-m", str(s.memcached_memory_mb),
            "-c", "1024",
        ]  # fmt: skip
        if os.geteuid() == 0:  # memcached refuses to run as root without naming a user
            argv += ["-u", getpass.getuser()]
        return argv

    def probe(self) -> None:
        client = MemcacheClient(
            (self.settings.host, self.settings.memcached_port), connect_timeout=1, timeout=1
        )
        try:
            client.version()
        finally:
            client.close()


class RabbitMQ(Service):
    """RabbitMQ under its own node name, data dir, Erlang cookie and port mapper."""

    name = "rabbitmq"
    commands = ("/usr/lib/rabbitmq/bin/rabbitmq-server",)
    stop_timeout = 30.0

    port_fields: ClassVar[dict[str, str]] = {
        "amqp": "rabbitmq_port",
        "erlang-dist": "rabbitmq_dist_port",
    }

    def prepare(self, say: Say) -> None:
        super().prepare(say)
        s = self.settings
        (self.root / "home").mkdir(exist_ok=True)
        (self.root / "rabbitmq.conf").write_text(
            "# written by `agentflux stack up`\n"
            f"listeners.tcp.default = {s.host}:{s.rabbitmq_port}\n"
            "loopback_users.guest = true\n"
            "vm_memory_high_watermark.absolute = 512MiB\n"
            "disk_free_limit.absolute = 100MB\n"
        )
        (self.root / "enabled_plugins").write_text("[].\n")

    def argv(self) -> list[str]:
        return ["/usr/lib/rabbitmq/bin/rabbitmq-server"]

    def _erlang_env(self) -> dict[str, str]:
        s = self.settings
        return {
            "HOME": str(self.root / "home"),  # the Erlang cookie lives here
            "ERL_EPMD_PORT": str(s.rabbitmq_epmd_port),
            "ERL_EPMD_ADDRESS": s.host,
        }

    def env(self) -> dict[str, str]:
        s = self.settings
        ip = ",".join(s.host.split("."))
        return {
            **super().env(),
            **self._erlang_env(),
            "LC_ALL": "C.UTF-8",
            "RABBITMQ_NODENAME": s.rabbitmq_node,
            "RABBITMQ_NODE_IP_ADDRESS": s.host,
            "RABBITMQ_NODE_PORT": str(s.rabbitmq_port),
            "RABBITMQ_DIST_PORT": str(s.rabbitmq_dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.data),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_LOGS": "-",
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.root / "beam.pid"),
            # Keep Erlang distribution (used by rabbitmqctl) on loopback too.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": f"-kernel inet_dist_use_interface {{{ip}}}",
        }

    def probe(self) -> None:
        asyncio.run(self._probe())

    async def _probe(self) -> None:
        connection = await aio_pika.connect(self.settings.amqp_url, timeout=3)
        try:
            channel = await connection.channel()
            await channel.declare_queue("", exclusive=True, auto_delete=True)
        finally:
            await connection.close()

    def after_stop(self) -> None:
        # The port mapper outlives the node; it is the stack's own (own port), so stop it.

        subprocess.run(
            ["epmd", "-kill"],
            env={**super().env(), **self._erlang_env()},
            capture_output=True,
            check=False,
            timeout=10,
        )


def kafka_cluster_id() -> str:
    """A KRaft cluster id: a random UUID in URL-safe base64, as `kafka-storage
    random-uuid` makes one. Like Kafka's own, never one that begins with "-": a command
    line reads it as an option (1 id in 64 did, and formatting the storage failed)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class Kafka(Service):
    """Single-node KRaft Kafka from Maven Central jars, heap capped."""

    name = "kafka"
    commands = ("java", "mvn")
    stop_timeout = 30.0

    port_fields: ClassVar[dict[str, str]] = {
        "broker": "kafka_port",
        "controller": "kafka_controller_port",
    }

    @property
    def libs(self) -> Path:
        return self.settings.cache_dir / f"kafka-{self.settings.kafka_version}" / "libs"

    def prepare(self, say: Say) -> None:
        super().prepare(say)
        major = java_major()
        if major is None or major < 17:
            raise StackError(
                f"kafka: Apache Kafka 4.x needs Java 17 or newer, found "
                f"{'no java' if major is None else f'Java {major}'} on PATH; "
                "install one: apt-get install -y openjdk-17-jre-headless"
            )
        ensure_kafka_jars(self.settings.kafka_version, self.settings.cache_dir, say)
        s = self.settings
        props = self.root / "server.properties"
        props.write_text(
            "# written by `agentflux stack up`\n"
            "process.roles=broker,controller\n"
            "node.id=1\n"
            f"controller.quorum.bootstrap.servers={s.host}:{s.kafka_controller_port}\n"
            f"listeners=PLAINTEXT://{s.host}:{s.kafka_port},"
            f"CONTROLLER://{s.host}:{s.kafka_controller_port}\n"
            f"advertised.listeners=PLAINTEXT://{s.host}:{s.kafka_port}\n"
            "controller.listener.names=CONTROLLER\n"
            "inter.broker.listener.name=PLAINTEXT\n"
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n"
            f"log.dirs={self.data}\n"
            f"num.partitions={s.kafka_partitions}\n"
            "offsets.topic.replication.factor=1\n"
            "offsets.topic.num.partitions=3\n"
            "transaction.state.log.replication.factor=1\n"
            "transaction.state.log.min.isr=1\n"
            "share.coordinator.state.topic.replication.factor=1\n"
            "share.coordinator.state.topic.min.isr=1\n"
            "group.initial.rebalance.delay.ms=0\n"
            # Topics come from the contracts (and tests create their own): a typo in
            # a topic name must fail, not create a topic nobody reads.
            "auto.create.topics.enable=false\n"
        )
        if not (self.data / "meta.properties").is_file():
            say("kafka: formatting KRaft storage")

            cluster_id = kafka_cluster_id()
            done = subprocess.run(
                [
                    "java",
                    "-cp",
                    f"{self.libs}/*",
                    "kafka.tools.StorageTool",
                    "format",
                    "--standalone",
                    # `=`: an id that began with "-" would be read as an option.
                    f"--cluster-id={cluster_id}",
                    "-c",
                    str(props),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                raise StackError(
                    f"kafka: formatting storage in {self.data} failed:\n{done.stdout}{done.stderr}"
                )

    def argv(self) -> list[str]:
        heap = self.settings.kafka_heap_mb
        return [
            "java",
            f"-Xmx{heap}m", f"-Xms{min(heap, 256)}m",
            "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={DEPLOY_DIR / 'kafka' / 'log4j2.yaml'}",
            f"-Dkafka.logs.dir={self.root / 'logs'}",
            "-cp", f"{self.libs}/*",
            "kafka.Kafka", str(self.root / "server.properties"),
        ]  # fmt: skip

    def probe(self) -> None:
        asyncio.run(ensure_kafka_topics(self.settings, [TopicSpec(_READY_TOPIC, 1)], timeout=5))
        bootstrap = self.settings.kafka_bootstrap_servers
        token = uuid.uuid4().hex.encode()
        producer = Producer({"bootstrap.servers": bootstrap, "message.timeout.ms": 5000})
        delivered: list[tuple[KafkaError | None, int]] = []
        producer.produce(
            _READY_TOPIC, token, on_delivery=lambda e, m: delivered.append((e, m.offset() or 0))
        )
        producer.flush(6)
        if not delivered or delivered[0][0] is not None:
            raise StackError(f"kafka: produce failed: {delivered or 'no delivery report'}")
        offset = delivered[0][1]
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "agentflux-ready",
                "enable.auto.commit": False,
            }
        )
        try:
            consumer.assign([TopicPartition(_READY_TOPIC, 0, offset)])
            msg = consumer.poll(5)
            if msg is None:
                raise StackError("kafka: produced a record but could not consume it")
            if msg.error():
                raise KafkaException(msg.error())
            if msg.value() != token:
                raise StackError("kafka: consumed a different record than the one produced")
        finally:
            consumer.close()


def all_services(settings: Settings) -> list[Service]:
    """The stack's services in start order (slowest first, so they boot in parallel)."""
    return [Kafka(settings), RabbitMQ(settings), Redis(settings), Memcached(settings)]
