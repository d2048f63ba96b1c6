"""docs/wire-protocol.md and the code cannot drift: every header, topic, type, key and
dead-letter header the document lists is the code's, and the code has no other."""

from __future__ import annotations

import re
from pathlib import Path

from interceptors._amqp_consumer import ATTEMPT_HEADER
from interceptors._carriers import CE_ATTRIBUTES, CONTEXT_KEYS, TRACEPARENT, TRACESTATE
from services.runtime.adapters.kafka import producer_config
from services.runtime.bearer import CREDENTIAL_KEYS
from services.runtime.config import Settings
from services.runtime.contracts import registry

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "wire-protocol.md").read_text()
CODE = ROOT / "interceptors"


def table(first_header: str) -> list[list[str]]:
    """The rows of the table whose header row starts with `| first_header |`, cells
    stripped of spaces and backticks."""
    lines = DOC.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().strip("`") for cell in line.strip("|").split("|")])
    return rows


def test_the_context_table_is_the_codes() -> None:
    documented = [tuple(row[:4]) for row in table("field")]
    assert documented == [(k.field, k.grpc, k.kafka, k.amqp) for k in CONTEXT_KEYS]


def test_the_message_headers_are_the_codes() -> None:
    documented = {row[0] for row in table("header")}
    assert documented == {*CE_ATTRIBUTES, TRACEPARENT, TRACESTATE}
    assert f"`{ATTEMPT_HEADER}`" in DOC


def test_the_gateway_metadata_is_the_codes() -> None:
    documented = {row[0] for row in table("key")}
    assert documented == {*CREDENTIAL_KEYS, TRACEPARENT, TRACESTATE}


def test_topics_types_keys_and_queues_are_the_contracts() -> None:
    contracts = registry()
    events = {(row[0], row[1], row[2]) for row in table("topic")}
    assert events == {(e.topic, e.type_name, e.key_field) for e in contracts.events.values()}
    tasks = {tuple(row) for row in table("exchange")}
    assert tasks == {
        (t.exchange, t.queue, t.type_name, t.dead_letter_queue) for t in contracts.tasks.values()
    }
    assert f"`{contracts.dead_letter_topic}`" in DOC


def _literals(path: Path) -> set[str]:
    return set(re.findall(r'"(dlq_[a-z0-9_]+)"', path.read_text()))


def test_dead_letter_headers_are_the_codes() -> None:
    assert {row[0] for row in table("Kafka dead-letter header")} == _literals(
        CODE / "_deadletter.py"
    )
    assert {row[0] for row in table("AMQP dead-letter header")} == _literals(
        CODE / "_amqp_consumer.py"
    )


def test_the_mesh_partitions_as_the_document_says() -> None:
    # The Go SDK's producer (and any Java producer) hashes keys with murmur2; the mesh's
    # producers must too, or one conversation's events split across partitions.
    assert producer_config(Settings())["partitioner"] == "murmur2_random"
    assert "murmur2_random" in DOC
