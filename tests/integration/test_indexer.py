"""The indexer on the real Kafka and Redis: `AgentCompleted` events in, gRPC searches out.

Each test has its own namespace (topics, consumer groups, guard keys) and index folder,
runs indexers in-process on free ports, and asserts on what a caller of
`ResponseIndexService` observes: results and their order, snippets, pages, status codes
and their `google.rpc.BadRequest` details, health and reflection."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from agentflux.v1 import events_pb2, index_pb2, index_pb2_grpc, types_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from interceptors import EventProducer, Outcome, Telemetry
from services.indexer import SERVICE_NAME, IndexerService
from services.runtime.config import Settings
from services.runtime.mesh import Mesh
from services.runtime.topology import ensure_kafka_topics, kafka_topics
from tests.integration.runtime_kit import delete_kafka, eventually

pytestmark = pytest.mark.integration

COMPLETED = types_pb2.COMPLETION_STATUS_COMPLETED
WAIT_S = 90.0  # a loaded 2-core machine runs Kafka, RabbitMQ and the suite at once


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Indexer:
    """One running replica and a client of it."""

    service: IndexerService
    mesh: Mesh
    stop: asyncio.Event
    task: asyncio.Task[None]
    channel: grpc.aio.Channel
    stub: Any  # ResponseIndexServiceAsyncStub

    def settled(self) -> int:
        """Records the consumer finished (indexed, skipped, duplicates, dead letters)."""
        counts = self.service.consumer.counts
        return counts[Outcome.HANDLED] + counts[Outcome.DUPLICATE] + counts[Outcome.DEAD_LETTERED]

    async def search(self, tenant: str, query: str, **kw: Any) -> index_pb2.SearchIndexResponse:
        request = index_pb2.SearchIndexRequest(tenant_id=tenant, query=query, **kw)
        response: index_pb2.SearchIndexResponse = await self.stub.SearchIndex(request, timeout=30)
        return response

    async def halt(self) -> None:
        self.stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, 60)
        await self.channel.close()
        await self.service.close()
        await self.mesh.close()


@dataclass
class Rig:
    settings: Settings
    ns: str
    index_dir: Path
    mesh: Mesh
    events: EventProducer
    telemetry: Telemetry
    indexers: list[Indexer] = field(default_factory=list)
    groups: set[str] = field(default_factory=set)
    emitted: int = 0

    def settings_for(self, replica: str, port: int = 0) -> Settings:
        return Settings(
            namespace=self.ns,
            indexer_replica=replica,
            indexer_port=port or free_port(),
            index_dir=self.index_dir,
            span_store=False,
            grace_s=5,
        )

    async def indexer(self, replica: str = "r1", port: int = 0) -> Indexer:
        settings = self.settings_for(replica, port)
        mesh = Mesh.connect(settings)
        service = IndexerService(mesh, telemetry=self.telemetry)
        self.groups.add(service.group)
        try:
            await service.start()
        except BaseException:
            await mesh.close()
            raise
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
        stub = index_pb2_grpc.ResponseIndexServiceStub(channel)
        indexer = Indexer(service, mesh, stop, task, channel, stub)
        self.indexers.append(indexer)
        return indexer

    async def emit(
        self,
        run_id: str,
        tenant: str,
        prompt: str,
        answer: str,
        *,
        conversation: str = "conv-1",
        status: int = COMPLETED,
        key: str = "",
    ) -> None:
        stamp = Timestamp()
        stamp.GetCurrentTime()
        event = events_pb2.AgentCompleted(
            run_id=run_id,
            tenant_id=tenant,
            conversation_id=conversation,
            status=status,
            answer=types_pb2.Answer(text=answer),
            prompt=prompt,
            complete_time=stamp,
        )
        await self.events.emit(event, idempotency_key=key or f"{run_id}:completed")
        self.emitted += 1

    async def caught_up(self, *indexers: Indexer) -> None:
        """Waits until every indexer finished every record emitted so far."""
        chosen = indexers or tuple(self.indexers)
        want = self.emitted

        async def done() -> bool:
            return all(i.settled() >= want for i in chosen)

        await eventually(done, timeout=WAIT_S, what=f"{want} records indexed by each replica")


@pytest.fixture
async def rig(settings: Settings, tmp_path: Path) -> AsyncIterator[Rig]:
    ns = f"t{uuid.uuid4().hex[:12]}."
    base = Settings(namespace=ns, index_dir=tmp_path, span_store=False)
    specs = kafka_topics(base, prefix=ns)
    await ensure_kafka_topics(base, specs)
    mesh = Mesh.connect(base)
    telemetry = Telemetry.create("indexer-test", batch_delay_ms=50)
    events = EventProducer(mesh.producer, telemetry, source="/test/composer", topic_prefix=ns)
    rig = Rig(base, ns, tmp_path, mesh, events, telemetry)
    try:
        yield rig
    finally:
        for indexer in rig.indexers:
            await indexer.halt()
        keys = [k async for k in mesh.redis.scan_iter(match=f"{ns}*")]
        if keys:
            await mesh.redis.delete(*keys)
        await mesh.close()
        telemetry.shutdown()
        await delete_kafka(base, [s.name for s in specs], sorted(rig.groups))


def tenant() -> str:
    return f"acme-{uuid.uuid4().hex[:8]}"


def run_ids(response: index_pb2.SearchIndexResponse) -> list[str]:
    return [r.run_id for r in response.results]


async def fillers(rig: Rig, tenant_id: str, n: int = 8) -> None:
    """Answers about something else: bm25 needs a corpus in which the searched words
    are rare, as they are in a real index."""
    for i in range(n):
        await rig.emit(f"filler-{i}", tenant_id, f"garden question {i}", f"Water the roses {i}.")


# -- searching ---------------------------------------------------------------------------


async def test_the_better_match_ranks_first_with_a_snippet_of_the_match(rig: Rig) -> None:
    indexer = await rig.indexer()
    t = tenant()
    await fillers(rig, t)
    long_text = "Our shop sells shoes and hats. " * 12 + "A refund is possible. " + "Hats. " * 12
    await rig.emit("weak", t, "what do you sell", long_text)
    await rig.emit(
        "strong",
        t,
        "what is the refund policy",
        "Refund policy: a refund is paid within five days, and the refund policy covers "
        "every order.",
    )
    await rig.caught_up()

    response = await indexer.search(t, "refund policy?")

    assert run_ids(response) == ["strong", "weak"]
    best, other = response.results
    assert best.score > other.score > 0
    assert "refund" in best.snippet.lower()
    assert "refund" in other.snippet.lower()
    assert len(other.snippet) < len(long_text)  # a part of the answer, not all of it
    assert best.prompt == "what is the refund policy"
    assert best.conversation_id == "conv-1"
    assert abs(best.complete_time.ToSeconds() - time.time()) < 600
    assert response.next_page_token == ""


async def test_pages_cover_every_result_once(rig: Rig) -> None:
    indexer = await rig.indexer()
    t = tenant()
    await fillers(rig, t, 3)
    expected = {f"run-{i}" for i in range(7)}
    for i in range(7):
        await rig.emit(f"run-{i}", t, f"invoice question {i}", f"Invoice {i} is paid. " * (i + 1))
    await rig.caught_up()

    seen: list[str] = []
    sizes: list[int] = []
    token = ""
    for _ in range(10):
        page = await indexer.search(t, "invoice", page_size=3, page_token=token)
        seen += run_ids(page)
        sizes.append(len(page.results))
        token = page.next_page_token
        if not token:
            break
    assert sizes == [3, 3, 1]
    assert sorted(seen) == sorted(expected)  # every one, none twice

    everything = await indexer.search(t, "invoice", page_size=100)
    assert run_ids(everything) == seen  # pages follow the ranking of one big page


async def test_answers_indexed_while_paging_do_not_shift_later_pages(rig: Rig) -> None:
    indexer = await rig.indexer()
    t = tenant()
    await fillers(rig, t, 3)
    # Answers of one shape score alike, so the ranking is by age and cannot move.
    expected = [f"run-{i}" for i in range(7)]
    for i in range(7):
        await rig.emit(f"run-{i}", t, f"invoice question {i}", f"Invoice {i} is paid.")
    await rig.caught_up()
    first = await indexer.search(t, "invoice", page_size=3)

    # A better match arrives between pages; without a bound it would push page 1's
    # last result onto page 2.
    await rig.emit("late", t, "invoice invoice", "Invoice, invoice and invoice.")
    await rig.caught_up()
    assert run_ids(await indexer.search(t, "invoice", page_size=1)) == ["late"]

    seen, token = run_ids(first), first.next_page_token
    while token:
        page = await indexer.search(t, "invoice", page_size=3, page_token=token)
        seen += run_ids(page)
        token = page.next_page_token
    assert seen == expected


async def test_conversation_filter_and_tenant_isolation(rig: Rig) -> None:
    indexer = await rig.indexer()
    a, b = tenant(), tenant()
    await fillers(rig, a, 4)
    await rig.emit("a-x", a, "kubernetes upgrade", "Upgrade the cluster.", conversation="conv-x")
    await rig.emit("a-y", a, "kubernetes backup", "Back the cluster up.", conversation="conv-y")
    await rig.emit("b-1", b, "kubernetes at b", "B's cluster runs kubernetes.", conversation="x")
    await rig.caught_up()

    assert sorted(run_ids(await indexer.search(a, "kubernetes cluster"))) == ["a-x", "a-y"]
    only_x = await indexer.search(a, "kubernetes", conversation_id="conv-x")
    assert run_ids(only_x) == ["a-x"]
    assert [r.conversation_id for r in only_x.results] == ["conv-x"]
    # Tenant B never sees A's answers, even for words only A's answers hold.
    assert run_ids(await indexer.search(b, "kubernetes cluster upgrade backup")) == ["b-1"]
    assert run_ids(await indexer.search(b, "upgrade")) == []
    assert run_ids(await indexer.search(tenant(), "kubernetes")) == []


async def test_hostile_fts_syntax_is_searched_as_plain_words(rig: Rig) -> None:
    indexer = await rig.indexer()
    t = tenant()
    await fillers(rig, t, 4)
    await rig.emit("near", t, "postgres vacuum", "Run VACUUM near midnight (NEAR the backup).")
    await rig.caught_up()

    for query in ['vacuum" OR *', "NEAR(vacuum", "prompt:vacuum", '"vacuum', "vacuum)^ -x"]:
        assert run_ids(await indexer.search(t, query)) == ["near"], query
    for query in ["NEAR(", 'AND OR NOT "', "x*"]:  # words, found nowhere: no error
        assert run_ids(await indexer.search(t, query)) in ([], ["near"]), query


# -- what is indexed, and only once ------------------------------------------------------


async def test_failed_and_cancelled_runs_are_not_indexed(rig: Rig) -> None:
    indexer = await rig.indexer()
    t = tenant()
    await rig.emit("failed", t, "deploy the app", "partial deploy answer", status=2)
    await rig.emit("cancelled", t, "deploy the app", "deploy answer cancelled", status=3)
    await rig.emit("no-answer", t, "deploy the app", "   ")
    await rig.emit("done", t, "deploy the service", "The service deploys on push.")
    await rig.caught_up()

    assert run_ids(await indexer.search(t, "deploy")) == ["done"]
    stats = indexer.service.stats
    assert (stats.not_indexed, stats.indexed) == (3, 1)


async def test_a_redelivered_or_repeated_completion_is_indexed_once(rig: Rig) -> None:
    indexer = await rig.indexer()
    t = tenant()
    args = (t, "rotate the api key", "Rotate the API key in settings, then redeploy.")
    await rig.emit("run-1", *args)
    await rig.emit("run-1", *args)  # redelivered: same idempotency key, the guard drops it
    await rig.emit("run-1", *args, key="run-1:again")  # same run, emitted anew
    await rig.emit("run-2", *args)  # a re-run that gave the same answer
    await rig.caught_up()

    assert run_ids(await indexer.search(t, "rotate api key")) == ["run-1"]
    stats = indexer.service.stats
    assert stats.indexed == 1
    assert stats.skipped_duplicates == 2
    assert (stats.bloom_maybe, stats.bloom_false_positives) == (2, 0)
    assert indexer.service.consumer.counts[Outcome.DUPLICATE] == 1


async def test_a_restarted_replica_keeps_its_index_and_a_new_file_is_rebuilt(rig: Rig) -> None:
    first = await rig.indexer("keep")
    t = tenant()
    await rig.emit("old-1", t, "restart question", "The restart answer.")
    await rig.emit("old-2", t, "another restart", "Restart twice.")
    await rig.caught_up()
    await first.halt()
    rig.indexers.remove(first)

    again = await rig.indexer("keep")
    # The file answers at once, before the consumer read anything.
    assert sorted(run_ids(await again.search(t, "restart"))) == ["old-1", "old-2"]
    # The Bloom filter was filled from the file: known content is a confirmed "maybe".
    await rig.emit("rerun", t, "restart question", "The restart answer.")
    await eventually(
        lambda: _true(again.service.stats.skipped_duplicates == 1), timeout=WAIT_S, what="skip"
    )
    assert (again.service.stats.bloom_maybe, again.service.stats.indexed) == (1, 0)
    await again.halt()
    rig.indexers.remove(again)

    # A new file under the same replica name reads the topic from the start again.
    for leftover in rig.index_dir.glob(f"{rig.ns}keep.db*"):
        leftover.unlink()
    rebuilt = await rig.indexer("keep")
    await rig.caught_up(rebuilt)
    assert sorted(run_ids(await rebuilt.search(t, "restart"))) == ["old-1", "old-2"]
    assert rebuilt.service.stats.indexed == 2


async def _true(value: bool) -> bool:
    return value


async def test_two_replicas_each_index_everything(rig: Rig) -> None:
    one, two = await rig.indexer("one"), await rig.indexer("two")
    assert one.service.group != two.service.group
    assert one.service.path != two.service.path
    t = tenant()
    await fillers(rig, t, 4)
    # Many conversations: the records spread over every partition of the topic.
    for i in range(12):
        await rig.emit(
            f"r{i}", t, f"replica question {i}", "Replicas answer.", conversation=f"c{i}"
        )
    await rig.caught_up(one, two)

    for indexer in (one, two):
        page = await indexer.search(t, "replica", page_size=100)
        assert sorted(run_ids(page)) == sorted(f"r{i}" for i in range(12))
        assert indexer.service.stats.indexed == 16


async def test_a_replica_given_a_taken_port_fails_to_start(rig: Rig) -> None:
    one = await rig.indexer("one")
    with pytest.raises(RuntimeError, match=f"cannot listen on 127.0.0.1:{one.service.port}"):
        await rig.indexer("two", port=one.service.port)
    t = tenant()
    await rig.emit("r1", t, "port question", "Ports are not shared.")
    await rig.caught_up(one)
    assert run_ids(await one.search(t, "port")) == ["r1"]  # the first one still answers


# -- bad requests, health, reflection ----------------------------------------------------


BAD = [
    ({"query": "hello"}, "tenant_id"),
    ({"tenant_id": "acme", "query": ""}, "query"),
    ({"tenant_id": "acme", "query": "   "}, "query"),
    ({"tenant_id": "acme", "query": "?!... -- ;"}, "query"),
    ({"tenant_id": "acme", "query": '"( * : ^ )"'}, "query"),
    ({"tenant_id": "acme", "query": "x" * 5000}, "query"),
    ({"tenant_id": "acme", "query": "hello", "page_token": "not a token"}, "page_token"),
    ({"tenant_id": "acme", "query": "hello", "page_token": "djE6Mzo5OTk5OmFiYw"}, "page_token"),
    ({"tenant_id": "acme", "query": "hello", "page_size": 1000}, "page_size"),
    ({"tenant_id": "acme", "query": "hello", "page_size": -1}, "page_size"),
    ({"tenant_id": "acme corp", "query": "hello"}, "tenant_id"),
]


async def test_bad_requests_are_invalid_argument_naming_the_field(rig: Rig) -> None:
    indexer = await rig.indexer()
    for fields, field_name in BAD:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await indexer.stub.SearchIndex(index_pb2.SearchIndexRequest(**fields), timeout=30)
        error = caught.value
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, fields
        status = rpc_status.from_call(error)
        assert status is not None, fields
        violations = _details(status.details, error_details_pb2.BadRequest).field_violations
        assert [v.field for v in violations] == [field_name], fields

    # A token is good only for the search that issued it.
    t = tenant()
    await fillers(rig, t, 3)
    await rig.caught_up()
    page = await indexer.search(t, "roses", page_size=1)
    assert page.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await indexer.search(t, "garden", page_size=1, page_token=page.next_page_token)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT

    # The call's tenant and the request's tenant must agree.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await indexer.stub.SearchIndex(
            index_pb2.SearchIndexRequest(tenant_id=t, query="roses"),
            metadata=(("x-tenant-id", "someone-else"),),
            timeout=30,
        )
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


def _details(details: Sequence[Any], kind: type[Any]) -> Any:
    found = [d for d in details if d.Is(kind.DESCRIPTOR)]
    assert len(found) == 1, f"expected one {kind.__name__} in {details}"
    message = kind()
    found[0].Unpack(message)
    return message


async def test_health_is_serving_after_start_and_reflection_lists_the_service(rig: Rig) -> None:
    indexer = await rig.indexer()
    health = health_pb2_grpc.HealthStub(indexer.channel)
    for name in ("", SERVICE_NAME):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=30)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, name

    reflection = reflection_pb2_grpc.ServerReflectionStub(indexer.channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME),
    ]
    replies = [r async for r in reflection.ServerReflectionInfo(iter(requests), timeout=30)]
    names = {s.name for s in replies[0].list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names
    files = replies[1].file_descriptor_response.file_descriptor_proto
    assert files, replies[1]
