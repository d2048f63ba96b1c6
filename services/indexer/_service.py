"""`IndexerService`: the index file, the consumer that fills it, the server that reads it.

Each replica is its own consumer group and its own file, named after the replica
(`AGENTFLUX_INDEXER_REPLICA`, else the host name), and reads every partition of
`agent.completed`: see the package doc for what that means when scaling out.

A file this replica has just created starts from nothing, so its group must too: on
the first start of a new file the replica's consumer group is deleted (its committed
offsets would skip the history the file lacks) and so are its guard's records (they
would turn the history into duplicates). Until that is done the file says
`rebuild_pending`, so a crash in between redoes it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket

from agentflux.v1 import events_pb2
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from opentelemetry import trace

from interceptors import EventConsumer, IdempotencyGuard, Incoming, InvalidArgument, Telemetry
from services.indexer._projection import IndexStats, Projection
from services.indexer._query import Search
from services.indexer._server import IndexServer
from services.indexer._store import IndexStore
from services.runtime.adapters.kafka import KafkaConsumer
from services.runtime.config import Settings
from services.runtime.keys import Keys
from services.runtime.mesh import Mesh, Service
from services.runtime.topology import ensure_kafka_topics, kafka_topics

__all__ = ["IndexerService", "replica_name"]

log = logging.getLogger(__name__)


def replica_name(settings: Settings) -> str:
    """`indexer_replica`, else the host name with anything but letters, digits, `_` and
    `-` replaced (a group, key and file name part)."""
    if settings.indexer_replica:
        return settings.indexer_replica
    host = re.sub(r"[^A-Za-z0-9_-]+", "-", socket.gethostname()).strip("-")
    return host[:64] or "indexer"


class IndexerService(Service):
    """The retrieval index of one replica (see the module and package docs)."""

    name = "indexer"

    def __init__(self, mesh: Mesh, *, telemetry: Telemetry | None = None) -> None:
        super().__init__(mesh)
        settings = mesh.settings
        self.replica = replica_name(settings)
        self.group = mesh.group(f"indexer.{self.replica}")
        self.topic = mesh.topic(mesh.contracts.event(events_pb2.AgentCompleted).topic)
        self.path = settings.index_folder / f"{settings.namespace}{self.replica}.db"
        self.guard = IdempotencyGuard(
            mesh.redis,
            namespace=Keys(settings.namespace).guard(f"indexer.{self.replica}"),
            lease_s=settings.lease_s,
        )
        self._own_telemetry = telemetry is None
        self.telemetry = telemetry or Telemetry.for_service("indexer", settings)
        self.store = IndexStore(self.path)
        self.projection = Projection(self.store)
        self.server = IndexServer(self.store, self.telemetry)
        self._kafka: KafkaConsumer | None = None
        self._consumer: EventConsumer | None = None
        self._closed = False

    @property
    def stats(self) -> IndexStats:
        """Counters of this process (indexed, duplicates, Bloom answers)."""
        return self.projection.stats

    @property
    def consumer(self) -> EventConsumer:
        """The `agent.completed` consumer (its `counts` say how records ended)."""
        if self._consumer is None:
            raise RuntimeError("the indexer has not started")
        return self._consumer

    @property
    def port(self) -> int:
        """The port the search service listens on (0 before `start`)."""
        return self.server.port

    async def start(self) -> None:
        """Opens the file, fills the Bloom filter, starts the server, warms, then reports
        SERVING; on failure releases what it took and raises."""
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise

    async def _start(self) -> None:
        settings = self.mesh.settings
        await self.store.open()
        if await self.store.rebuild_pending():
            await self._forget_previous_file()
            await self.store.rebuild_started()
        filled = await self.projection.fill()
        dead_letters = self.mesh.contracts.dead_letter_topic
        wanted = {self.topic, self.mesh.topic(dead_letters)}
        specs = kafka_topics(settings, self.mesh.contracts, self.mesh.namespace)
        await ensure_kafka_topics(settings, [s for s in specs if s.name in wanted])
        port = await self.server.start(f"{settings.host}:{settings.indexer_port}")
        self._kafka = KafkaConsumer(settings, self.group, [self.topic])
        self._consumer = EventConsumer(
            self._kafka,
            self.telemetry,
            dead_letters=self.mesh.producer,
            group=self.group,
            guard=self.guard,
            contracts=self.mesh.contracts,
            topic_prefix=self.mesh.namespace,
            grace_s=settings.grace_s,
        )
        # Warm: the first search, the first dead letter and the first claim are then as
        # fast as the rest, and the group is joined (its own: every partition is ours).
        await self._consumer.join()
        await self.mesh.redis.ping()
        await self.mesh.producer.warm([self.mesh.topic(dead_letters)])
        await self.store.search(
            Search(
                tenant_id="",
                match='"warm"',
                conversation_id="",
                limit=1,
                offset=0,
                max_id=None,
                fingerprint="",
            )
        )
        await self.server.serving()
        log.info(
            "indexer %s: %s (%d answers) on port %d, group %s",
            self.replica,
            self.path,
            filled,
            port,
            self.group,
        )

    async def _forget_previous_file(self) -> None:
        admin = AdminClient({"bootstrap.servers": self.mesh.settings.kafka_bootstrap_servers})
        for fut in admin.delete_consumer_groups([self.group], request_timeout=30).values():
            try:
                await asyncio.wrap_future(fut)
            except KafkaException as exc:
                code = exc.args[0].code()
                if code == KafkaError.NON_EMPTY_GROUP:
                    raise RuntimeError(
                        f"indexer: group {self.group} has live members: another process runs "
                        f"replica {self.replica!r}; give every replica its own "
                        "AGENTFLUX_INDEXER_REPLICA"
                    ) from exc
                if code != KafkaError.GROUP_ID_NOT_FOUND:
                    raise
        pattern = Keys(self.mesh.namespace).guard(f"indexer.{self.replica}") + ":idem:*"
        batch: list[bytes] = []
        async for key in self.mesh.redis.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                await self.mesh.redis.delete(*batch)
                batch.clear()
        if batch:
            await self.mesh.redis.delete(*batch)
        log.info(
            "indexer %s: new index file; rebuilding from the start of %s", self.replica, self.topic
        )

    async def _handle(self, incoming: Incoming) -> bytes:
        event = incoming.event
        if not isinstance(event, events_pb2.AgentCompleted):  # the contract check ran first
            raise InvalidArgument("ce_type", f"expected AgentCompleted, got {type(event)}")
        outcome = await self.projection.apply(event)
        trace.get_current_span().set_attribute("agentflux.indexer.outcome", outcome)
        return outcome.encode()

    async def run(self, stop: asyncio.Event) -> None:
        """Indexes until `stop` is set; then reports NOT_SERVING, lets the consumer finish
        its in-flight records and searches in flight finish, both within `grace_s`.
        Raises what stopped the consumer if it stopped on its own."""
        consume = asyncio.create_task(self.consumer.run(self._handle, stop), name="indexer")
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({consume, stopped}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            consume.cancel()
            raise
        finally:
            stopped.cancel()
            await self.server.draining()
            await asyncio.gather(
                consume, self.server.stop(self.mesh.settings.grace_s), return_exceptions=True
            )
        consume.result()

    async def close(self) -> None:
        """Stops the server if `run` did not, closes the consumer and the file."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            await self.server.stop(None)
        if self._kafka is not None:
            await self._kafka.close()
        await self.store.close()
        if self._own_telemetry:
            self.telemetry.shutdown()
