"""The gateway's edge as callers meet it: API keys and tenants, from the side of a
careless client and of one trying another tenant's ids, and the `agentflux tenants`
commands an operator uses.

The gateway runs in-process on the real stack with `auth = "required"` (the default);
clients are real grpc.aio channels presenting keys as any gRPC client would."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from agentflux.v1 import gateway_pb2, gateway_pb2_grpc, types_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from interceptors import instrument_caches, uninstrument_caches
from services.cli.spans import read_spans
from services.runtime.apikeys import ApiKeyStore, digest_of
from services.runtime.bearer import api_key_interceptors
from services.runtime.config import Settings
from services.runtime.keys import Keys
from tests.integration.runtime_kit import eventually
from tests.integration.test_gateway import Rig, collect, rich_status, running_gateway

pytestmark = pytest.mark.integration

AGENTFLUX = str(Path(sys.executable).with_name("agentflux"))
SETTINGS_KEY = "afk_from-the-settings-" + uuid.uuid4().hex
KEYS = {"auth": "required"}  # (running_gateway turns keys off unless told)


@pytest_asyncio.fixture(scope="module")
async def rig(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    async with running_gateway(
        tmp_path_factory.mktemp("stack"),
        auth="required",
        api_keys=[f"ops:{digest_of(SETTINGS_KEY)}"],
    ) as got:
        yield got


def keys(rig: Rig) -> ApiKeyStore:
    return ApiKeyStore(rig.store.redis, namespace=rig.settings.namespace)


async def new_key(rig: Rig, tenant: str = "") -> tuple[str, str]:
    """(tenant, key) of a fresh key of a fresh tenant (or of `tenant`)."""
    tenant = tenant or f"tenant-{uuid.uuid4().hex[:8]}"
    return tenant, (await keys(rig).add(tenant, "test")).key


def as_key(rig: Rig, key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def refused(call: Any) -> grpc.aio.AioRpcError:
    """The error a call (unary, or a stream read to its end) ends with."""
    try:
        got = await collect(call) if hasattr(call, "__aiter__") else await call
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError(f"served: {got}")


# --- credentials -------------------------------------------------------------------------


async def test_no_key_a_wrong_key_or_a_wrong_scheme_is_unauthenticated(rig: Rig) -> None:
    _, key = await new_key(rig)
    request = gateway_pb2.SubmitRequest(prompt="hello")
    for metadata in [
        (),
        (("authorization", "Bearer afk_" + "x" * 43),),
        (("x-api-key", key + "x"),),
        (("authorization", f"Basic {key}"),),
        (("authorization", "Bearer "),),
        (
            ("authorization", f"Bearer {key}"),
            ("x-api-key", key[:-1] + ("A" if key[-1] != "A" else "B")),
        ),
        (("x-tenant-id", "acme"),),  # naming a tenant is no credential
    ]:
        error = await refused(rig.stub.Submit(request, metadata=metadata))
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED, metadata
        assert key not in (error.details() or "")
    error = await refused(rig.stub.Submit(request))
    assert "agentflux tenants add" in (error.details() or "")
    # Every rpc is guarded, the stream too.
    error = await refused(rig.stub.StreamRun(gateway_pb2.StreamRunRequest(run_id=uuid.uuid4().hex)))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_a_key_names_its_tenant_either_way_it_is_sent(rig: Rig) -> None:
    tenant, key = await new_key(rig)
    for metadata in [(("authorization", f"Bearer {key}"),), (("x-api-key", key),)]:
        run = (await rig.stub.Submit(gateway_pb2.SubmitRequest(prompt="hi"), metadata=metadata)).run
        assert run.tenant_id == tenant
    # A client that presents it on every call (as `agentflux ask` does).
    async with grpc.aio.insecure_channel(
        rig.settings.gateway_target, interceptors=api_key_interceptors(key)
    ) as channel:
        stub = gateway_pb2_grpc.AgentGatewayStub(channel)
        got = await stub.GetRun(gateway_pb2.GetRunRequest(run_id=run.run_id))
        assert got.run.run_id == run.run_id


async def test_a_key_from_the_settings_is_honoured(rig: Rig) -> None:
    run = (
        await rig.stub.Submit(
            gateway_pb2.SubmitRequest(prompt="hi"), metadata=as_key(rig, SETTINGS_KEY)
        )
    ).run
    assert run.tenant_id == "ops"


async def test_a_revoked_key_stops_working_at_once(rig: Rig) -> None:
    tenant, key = await new_key(rig)
    _, kept = await new_key(rig, tenant)
    run = (
        await rig.stub.Submit(gateway_pb2.SubmitRequest(prompt="hi"), metadata=as_key(rig, key))
    ).run
    record = await keys(rig).lookup(key)
    assert record is not None
    await keys(rig).revoke(record.key_id)
    error = await refused(
        rig.stub.GetRun(gateway_pb2.GetRunRequest(run_id=run.run_id), metadata=as_key(rig, key))
    )
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    # The tenant's other key still works, and still sees the run.
    got = await rig.stub.GetRun(
        gateway_pb2.GetRunRequest(run_id=run.run_id), metadata=as_key(rig, kept)
    )
    assert got.run.run_id == run.run_id


async def test_a_key_made_to_expire_lasts_while_renewed_and_then_is_gone(rig: Rig) -> None:
    store, redis, names = keys(rig), rig.store.redis, Keys(rig.settings.namespace)
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    issued = await store.add(tenant, "for a moment", ttl_s=30)
    key_id, digest = issued.record.key_id, digest_of(issued.key)
    where = (names.api_key_id(key_id), names.api_key(digest))
    assert all(0 < ttl <= 30_000 for ttl in [await redis.pttl(k) for k in where])
    run = (
        await rig.stub.Submit(
            gateway_pb2.SubmitRequest(prompt="hi"), metadata=as_key(rig, issued.key)
        )
    ).run
    assert run.tenant_id == tenant
    assert await store.renew(key_id, 60)
    assert all(30_000 < ttl <= 60_000 for ttl in [await redis.pttl(k) for k in where])

    # A key made without an expiry is not given one.
    _, lasting = await new_key(rig, tenant)
    record = await store.lookup(lasting)
    assert record is not None
    assert not await store.renew(record.key_id, 60)
    assert await redis.pttl(names.api_key(digest_of(lasting))) == -1
    with pytest.raises(ValueError, match="ttl_s must be positive"):
        await store.add(tenant, ttl_s=0)

    # Left to expire: refused on every call, no longer listed, and not renewable.
    short = await store.add(tenant, "shorter", ttl_s=0.3)

    async def gone() -> bool:
        call = rig.stub.GetRun(
            gateway_pb2.GetRunRequest(run_id=run.run_id), metadata=as_key(rig, short.key)
        )
        try:
            await call
        except grpc.aio.AioRpcError as error:
            return error.code() is grpc.StatusCode.UNAUTHENTICATED
        return False

    await eventually(gone, timeout=10, what="the expired key to be refused")
    listed = {k.key_id for k in await store.list(tenant)}
    assert short.record.key_id not in listed
    assert {key_id, record.key_id} <= listed
    assert not await store.renew(short.record.key_id, 60)


def traced(rig: Rig, key: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A trace id of its own and the metadata that makes a call part of it."""
    trace_id = uuid.uuid4().hex
    return trace_id, (*as_key(rig, key), ("traceparent", f"00-{trace_id}-{'1' * 16}-01"))


def redis_spans(rig: Rig, trace_id: str) -> list[dict[str, Any]]:
    assert rig.gateway.telemetry.flush()
    folder = rig.settings.span_store_dir
    assert folder is not None
    return [
        s
        for s in read_spans(folder)
        if s["trace_id"] == trace_id and s["attributes"].get("db.system") == "redis"
    ]


async def test_a_known_key_is_read_and_its_call_counted_in_one_round_trip(rig: Rig) -> None:
    _, key = await new_key(rig)
    request = gateway_pb2.ListRunsRequest()
    uninstrument_caches()  # whatever another test left on: its spans would go elsewhere
    instrument_caches(rig.gateway.telemetry)  # as `agentflux serve` does
    try:
        first, metadata = traced(rig, key)
        await rig.stub.ListRuns(request, metadata=metadata)
        second, metadata = traced(rig, key)
        await rig.stub.ListRuns(request, metadata=metadata)
    finally:
        uninstrument_caches()
    before, after = redis_spans(rig, first), redis_spans(rig, second)
    # First sight of the key: its record, then the call counted. Then both in one script.
    assert [s["name"] for s in before[:2]] == ["HGETALL", "EVALSHA"], before
    assert after[0]["name"] == "EVALSHA", after
    assert len(after) == len(before) - 1, (before, after)


async def test_a_revoked_key_costs_its_tenant_no_quota(settings: Settings, tmp_path: Path) -> None:
    async with running_gateway(tmp_path, rate_limit=3, rate_window_s=600, **KEYS) as rig:
        tenant, key = await new_key(rig)
        _, kept = await new_key(rig, tenant)

        async def list_runs(key: str) -> grpc.StatusCode:
            try:
                await rig.stub.ListRuns(gateway_pb2.ListRunsRequest(), metadata=as_key(rig, key))
            except grpc.aio.AioRpcError as error:
                return error.code()
            return grpc.StatusCode.OK

        assert await list_runs(key) is grpc.StatusCode.OK  # the gateway now knows its tenant
        record = await keys(rig).lookup(key)
        assert record is not None
        await keys(rig).revoke(record.key_id)
        for _ in range(5):
            assert await list_runs(key) is grpc.StatusCode.UNAUTHENTICATED
        # The tenant used one call of three: the other key has exactly two left.
        assert [await list_runs(kept) for _ in range(3)] == [
            grpc.StatusCode.OK,
            grpc.StatusCode.OK,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ]


async def test_a_record_naming_another_tenant_is_counted_against_that_tenant(rig: Rig) -> None:
    # A key never changes tenant; a record edited by hand is the only way to see what the
    # one-round-trip path does when the tenant it was told is no longer the record's.
    first, key = await new_key(rig)
    second = f"tenant-{uuid.uuid4().hex[:8]}"
    windows = Keys(rig.settings.namespace)
    redis = rig.store.redis

    async def list_runs() -> None:
        await rig.stub.ListRuns(gateway_pb2.ListRunsRequest(), metadata=as_key(rig, key))

    await list_runs()  # the gateway learns the key's tenant
    await redis.hset(windows.api_key(digest_of(key)), "tenant", second)
    await list_runs()
    await list_runs()
    assert await redis.zcard(windows.rate(first)) == 1
    assert await redis.zcard(windows.rate(second)) == 2


async def test_health_and_reflection_need_no_key(rig: Rig) -> None:
    health = health_pb2_grpc.HealthStub(rig.channel)
    got = await health.Check(health_pb2.HealthCheckRequest())
    assert got.status == health_pb2.HealthCheckResponse.SERVING


async def test_keys_are_stored_hashed_and_never_logged(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _, key = await new_key(rig)
    await rig.stub.Submit(gateway_pb2.SubmitRequest(prompt="hi"), metadata=as_key(rig, key))
    await refused(
        rig.stub.Submit(
            gateway_pb2.SubmitRequest(prompt="hi"), metadata=(("x-api-key", key + "0"),)
        )
    )
    redis = rig.store.redis
    ns = rig.settings.namespace
    for name in [k async for k in redis.scan_iter(f"{ns}*", count=1000)]:
        assert key.encode() not in name
        kind = (await redis.type(name)).decode()
        if kind == "string":
            values = [await redis.get(name)]
        elif kind == "hash":
            values = list((await redis.hgetall(name)).values())
        else:
            continue
        assert all(key.encode() not in (v or b"") for v in values), name
    assert key not in caplog.text
    assert key[:-1] not in caplog.text


# --- one tenant never sees another's --------------------------------------------------------


async def test_another_tenants_runs_are_not_found_whatever_it_tries(rig: Rig) -> None:
    owner, owner_key = await new_key(rig)
    _, other_key = await new_key(rig)
    mine = as_key(rig, owner_key)
    theirs = as_key(rig, other_key)
    run = (await rig.stub.Submit(gateway_pb2.SubmitRequest(prompt="secret"), metadata=mine)).run
    run_id = run.run_id
    for call in [
        rig.stub.GetRun(gateway_pb2.GetRunRequest(run_id=run_id), metadata=theirs),
        rig.stub.StreamRun(gateway_pb2.StreamRunRequest(run_id=run_id), metadata=theirs),
        rig.stub.CancelRun(gateway_pb2.CancelRunRequest(run_id=run_id), metadata=theirs),
        rig.stub.ApproveToolCall(
            gateway_pb2.ApproveToolCallRequest(run_id=run_id, tool_call_id=f"{run_id}.0.000"),
            metadata=theirs,
        ),
        rig.stub.RejectToolCall(
            gateway_pb2.RejectToolCallRequest(run_id=run_id, tool_call_id=f"{run_id}.0.000"),
            metadata=theirs,
        ),
        # Naming the owner as the tenant changes nothing: the key alone decides.
        rig.stub.GetRun(
            gateway_pb2.GetRunRequest(run_id=run_id), metadata=(*theirs, ("x-tenant-id", owner))
        ),
    ]:
        error = await refused(call)
        # NOT_FOUND, word for word what an unknown id gets: no existence leak.
        assert error.code() is grpc.StatusCode.NOT_FOUND
        assert error.details() == f"no run {run_id}"
    listed = await rig.stub.ListRuns(gateway_pb2.ListRunsRequest(), metadata=theirs)
    assert run_id not in [r.run_id for r in listed.runs]
    # Reusing the owner's request id starts the other tenant's own run, never the owner's.
    reused = "req-" + uuid.uuid4().hex
    first = await rig.stub.Submit(
        gateway_pb2.SubmitRequest(prompt="a", request_id=reused), metadata=mine
    )
    second = await rig.stub.Submit(
        gateway_pb2.SubmitRequest(prompt="b", request_id=reused), metadata=theirs
    )
    assert first.run.run_id != second.run.run_id
    # The owner's run was not touched by the other tenant's cancel.
    got = await rig.stub.GetRun(gateway_pb2.GetRunRequest(run_id=run_id), metadata=mine)
    assert got.run.status == types_pb2.RUN_STATUS_PENDING
    assert got.run.tenant_id == owner
    # Its records are under the owner's tenant in Redis, nowhere else.
    names = [k.decode() async for k in rig.store.redis.scan_iter(f"*{run_id}*", count=1000)]
    base = f"{rig.settings.namespace}af:{owner}:"
    assert names
    assert all(n.startswith(base) for n in names), names


# --- `agentflux tenants` --------------------------------------------------------------------


def tenants(rig: Rig, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "AGENTFLUX_NAMESPACE": rig.settings.namespace,
        "AGENTFLUX_STACK_DIR": str(rig.settings.stack_dir),
    }
    return subprocess.run(
        [AGENTFLUX, "tenants", *args], capture_output=True, text=True, env=env, timeout=60
    )


async def test_tenants_add_list_and_revoke_from_the_command_line(rig: Rig) -> None:
    tenant = f"cli-{uuid.uuid4().hex[:6]}"
    added = await asyncio.to_thread(tenants, rig, "add", tenant, "--name", "ci robot")
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip()
    assert key.startswith("afk_")
    assert "\n" not in key
    assert "shown" in added.stderr
    assert "this once" in added.stderr
    run = (
        await rig.stub.Submit(gateway_pb2.SubmitRequest(prompt="hi"), metadata=as_key(rig, key))
    ).run
    assert run.tenant_id == tenant

    listed = await asyncio.to_thread(tenants, rig, "list", tenant)
    assert listed.returncode == 0, listed.stderr
    assert key not in listed.stdout
    assert digest_of(key) not in listed.stdout
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith(tenant)]
    key_id = row.split()[1]
    assert key[4:].startswith(key_id)
    assert "active" in row
    assert "ci robot" in row

    revoked = await asyncio.to_thread(tenants, rig, "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    error = await refused(
        rig.stub.GetRun(gateway_pb2.GetRunRequest(run_id=run.run_id), metadata=as_key(rig, key))
    )
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    listed = await asyncio.to_thread(tenants, rig, "list", tenant)
    assert "revoked" in listed.stdout
    again = await asyncio.to_thread(tenants, rig, "revoke", key_id)
    assert again.returncode == 0
    assert "already revoked" in again.stdout


async def test_tenants_commands_refuse_bad_input_with_what_to_do(rig: Rig) -> None:
    bad = await asyncio.to_thread(tenants, rig, "add", "no spaces please")
    assert bad.returncode == 2
    assert "not a tenant id" in bad.stderr
    unknown = await asyncio.to_thread(tenants, rig, "revoke", "nosuchid")
    assert unknown.returncode == 1
    assert "agentflux tenants list" in unknown.stderr


# --- fairness: rate limits, runs in flight, sizes, reused request ids ---------------------


def detail(error: grpc.aio.AioRpcError, kind: Any) -> Any:
    for packed in rich_status(error).details:
        got = kind()
        if packed.Unpack(got):
            return got
    raise AssertionError(f"no {kind.DESCRIPTOR.name} detail")


async def test_a_flood_through_two_gateways_gets_exactly_the_limit(
    settings: Settings, tmp_path: Path
) -> None:
    namespace = f"t{uuid.uuid4().hex[:10]}."
    limits = {"rate_limit": 10, "rate_window_s": 600, "namespace": namespace, **KEYS}
    async with (
        running_gateway(tmp_path / "a", **limits) as one,
        running_gateway(tmp_path / "b", topics=False, **limits) as two,
    ):
        tenant, key = await new_key(one)
        _, bystander = await new_key(one)

        async def call(rig: Rig) -> grpc.StatusCode:
            try:
                await rig.stub.ListRuns(gateway_pb2.ListRunsRequest(), metadata=as_key(rig, key))
            except grpc.aio.AioRpcError as error:
                failed = error
            else:
                return grpc.StatusCode.OK
            assert failed.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, failed
            retry = detail(failed, error_details_pb2.RetryInfo).retry_delay.ToTimedelta()
            assert 0 < retry.total_seconds() <= 600
            quota = detail(failed, error_details_pb2.QuotaFailure)
            assert [v.subject for v in quota.violations] == [f"tenant:{tenant}"]
            return failed.code()

        codes = await asyncio.gather(*(call(one if i % 2 else two) for i in range(40)))
        assert codes.count(grpc.StatusCode.OK) == 10
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 30
        # Another tenant's calls are not touched by the flood.
        await two.stub.ListRuns(gateway_pb2.ListRunsRequest(), metadata=as_key(two, bystander))


async def test_the_window_slides_and_a_retry_after_the_hint_is_admitted(
    settings: Settings, tmp_path: Path
) -> None:
    async with running_gateway(tmp_path, rate_limit=3, rate_window_s=1, **KEYS) as rig:
        _, key = await new_key(rig)

        async def list_runs() -> Any:
            return await rig.stub.ListRuns(gateway_pb2.ListRunsRequest(), metadata=as_key(rig, key))

        for _ in range(3):
            await list_runs()
        error = await refused(list_runs())
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        retry = detail(error, error_details_pb2.RetryInfo).retry_delay.ToTimedelta()
        assert 0 < retry.total_seconds() <= 1

        async def admitted() -> bool:
            try:
                await list_runs()
            except grpc.aio.AioRpcError as error:
                code = error.code()
            else:
                return True
            assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
            return False

        await eventually(admitted, timeout=10, what="a call admitted once the window slid")


async def test_runs_in_flight_are_capped_per_tenant(settings: Settings, tmp_path: Path) -> None:
    async with running_gateway(tmp_path, max_runs_in_flight=2, **KEYS) as rig:
        _, key = await new_key(rig)
        _, other = await new_key(rig)
        runs = [
            (
                await rig.stub.Submit(
                    gateway_pb2.SubmitRequest(prompt=f"r{i}"), metadata=as_key(rig, key)
                )
            ).run
            for i in range(2)
        ]
        error = await refused(
            rig.stub.Submit(gateway_pb2.SubmitRequest(prompt="r2"), metadata=as_key(rig, key))
        )
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (
            detail(error, error_details_pb2.RetryInfo).retry_delay.ToTimedelta().total_seconds() > 0
        )
        # Another tenant still submits; and one run ending frees a place.
        await rig.stub.Submit(gateway_pb2.SubmitRequest(prompt="x"), metadata=as_key(rig, other))
        await rig.store.finish(runs[0].tenant_id, runs[0].run_id, types_pb2.RUN_STATUS_COMPLETED)
        await rig.stub.Submit(gateway_pb2.SubmitRequest(prompt="r3"), metadata=as_key(rig, key))


async def test_an_oversized_request_is_refused_before_it_is_read(
    settings: Settings, tmp_path: Path
) -> None:
    async with running_gateway(tmp_path, max_request_bytes=4096, **KEYS) as rig:
        _, key = await new_key(rig)
        error = await refused(
            rig.stub.Submit(gateway_pb2.SubmitRequest(prompt="x" * 5000), metadata=as_key(rig, key))
        )
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        listed = await rig.stub.ListRuns(gateway_pb2.ListRunsRequest(), metadata=as_key(rig, key))
        assert list(listed.runs) == []  # nothing was recorded


async def test_a_request_id_reused_for_another_request_is_refused_with_the_run(rig: Rig) -> None:
    _, key = await new_key(rig)
    request_id = "order-" + uuid.uuid4().hex
    first = (
        await rig.stub.Submit(
            gateway_pb2.SubmitRequest(prompt="what is 6*7", request_id=request_id),
            metadata=as_key(rig, key),
        )
    ).run
    # The same request again is a retry: the same run.
    again = (
        await rig.stub.Submit(
            gateway_pb2.SubmitRequest(prompt="what is 6*7", request_id=request_id),
            metadata=as_key(rig, key),
        )
    ).run
    assert again.run_id == first.run_id
    for changed in [
        gateway_pb2.SubmitRequest(prompt="what is 6*8", request_id=request_id),
        gateway_pb2.SubmitRequest(prompt="what is 6*7", request_id=request_id, priority=3),
    ]:
        error = await refused(rig.stub.Submit(changed, metadata=as_key(rig, key)))
        assert error.code() is grpc.StatusCode.ALREADY_EXISTS
        info = detail(error, error_details_pb2.ErrorInfo)
        assert info.reason == "REQUEST_ID_REUSED"
        assert info.metadata["run_id"] == first.run_id
    listed = await rig.stub.ListRuns(gateway_pb2.ListRunsRequest(), metadata=as_key(rig, key))
    assert [r.run_id for r in listed.runs] == [first.run_id]


async def test_the_idempotency_key_header_makes_submit_safe_to_retry(rig: Rig) -> None:
    # Clients of other languages send the standard header rather than the field.
    _, key = await new_key(rig)
    idem = "ik-" + uuid.uuid4().hex
    with_key = [*as_key(rig, key), ("idempotency-key", idem)]
    request = gateway_pb2.SubmitRequest(prompt="what is 6*7")
    first = (await rig.stub.Submit(request, metadata=with_key)).run
    again = (await rig.stub.Submit(request, metadata=with_key)).run
    assert again.run_id == first.run_id
    # The header and the field name the same thing: the same value in both is a retry...
    both = gateway_pb2.SubmitRequest(prompt="what is 6*7", request_id=idem)
    assert (await rig.stub.Submit(both, metadata=with_key)).run.run_id == first.run_id
    # ...another request under the same key is refused with the run it started...
    error = await refused(
        rig.stub.Submit(gateway_pb2.SubmitRequest(prompt="what is 6*8"), metadata=with_key)
    )
    assert error.code() is grpc.StatusCode.ALREADY_EXISTS
    assert detail(error, error_details_pb2.ErrorInfo).metadata["run_id"] == first.run_id
    # ...and two different values are a client bug, named, and nothing is recorded.
    clash = gateway_pb2.SubmitRequest(prompt="what is 6*9", request_id="other-" + idem)
    error = await refused(rig.stub.Submit(clash, metadata=with_key))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    violations = detail(error, error_details_pb2.BadRequest).field_violations
    assert [v.field for v in violations] == ["idempotency-key"]
    listed = await rig.stub.ListRuns(gateway_pb2.ListRunsRequest(), metadata=as_key(rig, key))
    assert [r.run_id for r in listed.runs] == [first.run_id]


async def test_ask_without_a_key_says_how_to_get_one(rig: Rig) -> None:
    env = {
        **os.environ,
        "AGENTFLUX_NAMESPACE": rig.settings.namespace,
        "AGENTFLUX_GATEWAY_PORT": str(rig.settings.gateway_port),
        "AGENTFLUX_API_KEY": "",
    }
    for extra in ([], ["--api-key", "afk_not-a-key-of-anyone"]):
        done = await asyncio.to_thread(
            subprocess.run,
            [AGENTFLUX, "ask", "what is 2+3", *extra],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert done.returncode != 0
        assert "UNAUTHENTICATED" in done.stderr
        assert "AGENTFLUX_API_KEY" in done.stderr
        assert "agentflux tenants add" in done.stderr
        assert "afk_not-a-key-of-anyone" not in done.stderr
