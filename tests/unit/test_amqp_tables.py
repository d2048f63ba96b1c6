"""The AMQP field-table decoder the RabbitMQ adapter puts in pamqp's place: the same
values as pamqp's own for every table pamqp writes, non-UTF-8 names and strings kept
instead of failing the frame, and malformed tables refused with ValueError."""

from __future__ import annotations

import datetime
import decimal
import random
from typing import Any

import pytest
from pamqp import encode

from services.runtime.adapters.rabbitmq import _lenient_table, unreadable


def _value(rng: random.Random, depth: int) -> Any:
    kinds = ["str", "int", "bool", "bytes", "float", "none", "decimal", "time"]
    if depth < 2:
        kinds += ["table", "array"]
    kind = rng.choice(kinds)
    if kind == "str":
        alphabet = "abc-_.:/ 0123456789éß中🙂"
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
    if kind == "int":
        return rng.choice([0, 1, -1, 127, 128, 32767, 40000, 2**31 - 1, 2**31, -(2**40)])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "bytes":
        return bytearray(rng.randrange(256) for _ in range(rng.randrange(0, 20)))
    if kind == "float":
        return rng.randrange(-4000, 4000) / 8  # pamqp writes a float in 32 bits
    if kind == "none":
        return None
    if kind == "decimal":
        return decimal.Decimal(rng.randrange(-10000, 10000)) / 100
    if kind == "time":
        return datetime.datetime.fromtimestamp(rng.randrange(0, 2**31), datetime.UTC)
    if kind == "table":
        return _table(rng, depth + 1)
    return [_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]


def _table(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    return {
        f"k{i}-{''.join(rng.choice('xyzé') for _ in range(rng.randrange(0, 6)))}": _value(
            rng, depth
        )
        for i in range(rng.randrange(0, 12))
    }


def _context_headers() -> dict[str, Any]:
    return {
        "ce_specversion": "1.0",
        "ce_type": "agentflux.v1.ToolTask",
        "ce_id": "a" * 32,
        "traceparent": "00-" + "e" * 32 + "-" + "f" * 16 + "-01",
        "agentflux-attempt": 2,
    }


@pytest.mark.parametrize("seed", range(300))
def test_decodes_what_pamqp_encodes(seed: int) -> None:
    table = _table(random.Random(seed))
    raw = encode.field_table(table)
    consumed, decoded = _lenient_table(raw + b"trailing bytes of the next property")
    assert consumed == len(raw)
    assert decoded == table


def test_the_headers_a_task_carries() -> None:
    headers = _context_headers()
    assert _lenient_table(encode.field_table(headers)) == (
        len(encode.field_table(headers)),
        headers,
    )


def _entry(name: bytes, kind: bytes, payload: bytes) -> bytes:
    return bytes([len(name)]) + name + kind + payload


def _framed(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def test_a_name_or_string_that_is_not_utf8_is_kept() -> None:
    bad_name = _entry(b"ce_\xff", b"S", (2).to_bytes(4, "big") + b"ok")
    bad_value = _entry(b"note", b"S", (2).to_bytes(4, "big") + b"\xfe\xfd")
    _, decoded = _lenient_table(_framed(bad_name + bad_value))
    (name,) = (k for k in decoded if k != "note")
    assert unreadable(name)
    assert decoded[name] == "ok"
    assert decoded["note"] == b"\xfe\xfd"  # pamqp's way: the raw bytes


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"\x00\x00", id="length cut short"),
        pytest.param(_framed(b"")[:-1] + b"\x09", id="length beyond the data"),
        pytest.param(_framed(bytes([9]) + b"abc"), id="name beyond the table"),
        pytest.param(
            _framed(_entry(b"k", b"S", (50).to_bytes(4, "big") + b"short")) + b"x" * 60,
            id="string beyond the table",
        ),
        pytest.param(_framed(_entry(b"k", b"S", b"\x00\x00")), id="string length cut short"),
        pytest.param(_framed(_entry(b"k", b"S", b"")[:-1]), id="type missing"),
        pytest.param(
            _framed(_entry(b"k", b"S", b"")[:-1]) + b"t\x01",
            id="type missing, the next property's bytes after the table",
        ),
        pytest.param(_framed(_entry(b"k", b"?", b"")), id="unknown type"),
    ],
)
def test_a_malformed_table_is_refused(raw: bytes) -> None:
    with pytest.raises(ValueError, match=r"exceeds|Could not unpack|Unknown type"):
        _lenient_table(raw)
