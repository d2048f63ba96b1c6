"""Every golden record of every released contract version (tests/golden/<version>/)
still decodes with today's contracts: the same fields, the same values, from the binary
form and from proto3 JSON, routed to the same topic or queue, with headers a consumer
accepts as they are."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from interceptors._carriers import KafkaHeaders
from interceptors._propagation import extract
from services.runtime.contracts import registry
from tests.golden.__main__ import records

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
FILES = sorted(GOLDEN.glob("v*/*.json"))


def test_there_are_golden_records_of_every_current_type() -> None:
    current = {p.stem for p in FILES}
    assert set(records()) <= current, "a new type: add its record with the next release"


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_a_golden_record_decodes_with_todays_contracts(path: Path) -> None:
    record: dict[str, Any] = json.loads(path.read_text())
    contracts = registry()
    type_name = record["type"]
    events = {e.type_name: e for e in contracts.events.values()}
    tasks = {t.type_name: t for t in contracts.tasks.values()}
    if "topic" in record:
        contract: Any = events[type_name]
        assert contract.topic == record["topic"]
        assert contract.key_field == record["key_field"]
    else:
        contract = tasks[type_name]
        assert contract.queue == record["queue"]
    message = contract.message_class.FromString(base64.b64decode(record["value_base64"]))
    assert json_format.MessageToDict(message) == record["fields"]
    if "key_field" in record:
        assert getattr(message, record["key_field"]) == record["key"]
    again = json_format.Parse(json.dumps(record["fields"]), contract.message_class())
    assert again == message
    headers = [(name, value.encode()) for name, value in record["headers"]]
    got = extract(KafkaHeaders(), headers, "kafka", strict=False)
    assert got.rejected == []
    assert got.attributes["ce_type"] == type_name
    assert got.context.event_id == f"golden/{type_name}"
