"""The context model: id rules, task-local binding, causation chains and deadlines."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import time
import uuid

import pytest

from interceptors._context import FluxContext, bind, check_id, current, new_id
from interceptors._errors import ContextValueError, InvalidArgument


def test_new_ids_are_version_4_uuids_across_pages_and_threads() -> None:
    # Several pages of the random pool, from threads at once: every id is unique.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        batches = list(pool.map(lambda _: [new_id() for _ in range(600)], range(4)))
    ids = [i for batch in batches for i in batch]
    assert len(set(ids)) == len(ids)
    for value in ids[:50]:
        parsed = uuid.UUID(hex=value)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert parsed.hex == value


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_mints_other_ids_than_its_parent() -> None:
    new_id()  # the parent holds a page of random bytes
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.close(read)
        os.write(write, " ".join(new_id() for _ in range(8)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as fh:
        child = fh.read().split()
    os.waitpid(pid, 0)
    parent = [new_id() for _ in range(8)]
    assert len(child) == 8
    assert not set(child) & set(parent)


def test_new_ids_are_fresh_and_pass_their_own_check() -> None:
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    for value in ids:
        assert re.fullmatch(r"[0-9a-f]{32}", value)
        assert check_id("x-correlation-id", value) == value


def test_new_context_has_fresh_correlation_and_event_ids() -> None:
    a, b = FluxContext.new(), FluxContext.new(tenant_id="acme")
    assert a.correlation_id != b.correlation_id
    assert a.event_id != b.event_id
    assert a.correlation_id != a.event_id
    assert (a.causation_id, a.tenant_id, a.deadline) == ("", "", None)
    assert b.tenant_id == "acme"


@pytest.mark.parametrize(
    "value",
    [
        "a",
        "0",
        "a" * 128,
        "run:42",
        "order-7.retry_2",
        "5d0c3b1a-9e8f-47f6-a2b1-c0d9e8f7a6b5",
    ],
)
def test_check_id_accepts_well_formed_ids(value: str) -> None:
    assert check_id("x-correlation-id", value) == value


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "empty"),
        ("a" * 129, "one over the limit"),
        ("a" * 10_000, "unbounded"),
        ("-leading-dash", "must start with a letter or digit"),
        (".hidden", "must start with a letter or digit"),
        ("has space", "space"),
        ("abc\n", "trailing newline ($ would allow it)"),
        ("abc\r\nx-tenant-id: evil", "header injection"),
        ("tab\there", "control character"),
        ("nul\x00", "NUL"),
        ("key/with/slash", "separator"),
        ("a,b", "list separator"),
        ("café", "non-ASCII letter"),
        ("\u0661\u0662\u0663", "Arabic-Indic digits"),
        ("\uff41\uff42\uff43", "full-width letters"),
        ("emoji😀", "emoji"),
    ],
)
def test_check_id_rejects_malformed_ids_naming_the_key(value: str, why: str) -> None:
    with pytest.raises(ContextValueError) as caught:
        check_id("x-correlation-id", value)
    assert caught.value.key == "x-correlation-id", why
    assert caught.value.field == "x-correlation-id"
    # A context error is an INVALID_ARGUMENT to a gRPC caller.
    assert isinstance(caught.value, InvalidArgument)
    assert caught.value.reason == "INVALID_CONTEXT"


def test_over_long_id_says_so() -> None:
    with pytest.raises(ContextValueError, match="longer than 128"):
        check_id("ce_correlationid", "a" * 129)


@pytest.mark.parametrize("value", ["acme", "t1", "acme-eu_2", "A" * 64])
def test_tenant_alphabet_accepts(value: str) -> None:
    assert check_id("x-tenant-id", value, tenant=True) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "A" * 65,
        "acme corp",
        "acme:eu",  # ':' is fine in ids but separates Redis key parts: never in a tenant
        "acme.eu",
        "_acme",
        "acme\n",
        "acmé",
    ],
)
def test_tenant_alphabet_rejects(value: str) -> None:
    with pytest.raises(ContextValueError) as caught:
        check_id("x-tenant-id", value, tenant=True)
    assert caught.value.key == "x-tenant-id"


def test_nothing_is_bound_outside_a_block() -> None:
    assert current() is None
    ctx = FluxContext.new()
    with bind(ctx) as bound:
        assert bound is ctx
        assert current() is ctx
    assert current() is None


def test_bind_nests_and_restores_even_on_error() -> None:
    outer, inner = FluxContext.new(), FluxContext.new()
    seen: list[FluxContext | None] = []

    def fail_inside() -> None:
        with bind(inner):
            seen.append(current())
            raise RuntimeError("boom")

    with bind(outer):
        with pytest.raises(RuntimeError, match="boom"):
            fail_inside()
        assert seen == [inner]
        assert current() is outer
    assert current() is None


async def test_binding_is_task_local() -> None:
    parent = FluxContext.new(tenant_id="parent")
    both_bound = asyncio.Barrier(3)
    seen: dict[str, tuple[FluxContext | None, FluxContext | None]] = {}

    async def worker(name: str) -> None:
        inherited = current()  # the task copied the parent's context when created
        with bind(FluxContext.new(tenant_id=name)):
            await both_bound.wait()  # every task has bound its own context now
            await asyncio.sleep(0)
            seen[name] = (inherited, current())

    with bind(parent):
        tasks = [asyncio.create_task(worker(n)) for n in ("a", "b")]
        await both_bound.wait()
        # Neither task's binding leaked into the parent.
        assert current() is parent
        await asyncio.gather(*tasks)
        assert current() is parent
    assert current() is None

    for name in ("a", "b"):
        inherited, own = seen[name]
        assert inherited is parent
        assert own is not None
        assert own.tenant_id == name


async def test_a_task_created_outside_any_binding_sees_none() -> None:
    async def read() -> FluxContext | None:
        return current()

    task = asyncio.create_task(read())
    with bind(FluxContext.new()):
        # Binding after the task was created does not reach into its copied context.
        assert await task is None


def test_child_builds_a_causation_chain() -> None:
    root = FluxContext.new(tenant_id="acme", run_id="run-1", idempotency_key="k1")
    first = root.child("evt-1")
    second = first.child("evt-2")

    assert first.event_id == "evt-1"
    assert first.causation_id == root.event_id
    assert second.event_id == "evt-2"
    assert second.causation_id == "evt-1"
    # Everything else travels unchanged along the chain.
    for ctx in (first, second):
        assert ctx.correlation_id == root.correlation_id
        assert (ctx.tenant_id, ctx.run_id, ctx.idempotency_key) == ("acme", "run-1", "k1")
    # Contexts are values: the parent is not modified.
    assert root.causation_id == ""
    with pytest.raises(AttributeError):
        root.event_id = "x"  # type: ignore[misc]


def test_with_replaces_only_named_fields() -> None:
    ctx = FluxContext.new(tenant_id="acme")
    other = ctx.with_(run_id="run-9")
    assert other.run_id == "run-9"
    assert (other.correlation_id, other.event_id, other.tenant_id) == (
        ctx.correlation_id,
        ctx.event_id,
        "acme",
    )
    assert ctx.run_id == ""


def test_no_deadline_means_no_remaining_and_never_expired() -> None:
    ctx = FluxContext.new()
    assert ctx.remaining() is None
    assert not ctx.expired()


def test_future_deadline_counts_down() -> None:
    ctx = FluxContext.new(deadline=time.time() + 5)
    remaining = ctx.remaining()
    assert remaining is not None
    assert 4.5 < remaining <= 5
    assert not ctx.expired()


def test_past_deadline_is_expired_with_zero_remaining() -> None:
    ctx = FluxContext.new(deadline=time.time() - 5)
    assert ctx.remaining() == 0.0
    assert ctx.expired()


async def test_deadline_expires_as_time_passes() -> None:
    ctx = FluxContext.new(deadline=time.time() + 0.05)
    assert not ctx.expired()
    await asyncio.sleep(0.08)
    assert ctx.expired()
    assert ctx.remaining() == 0.0


def test_child_keeps_the_deadline() -> None:
    deadline = time.time() + 3
    assert FluxContext.new(deadline=deadline).child("e").deadline == deadline
