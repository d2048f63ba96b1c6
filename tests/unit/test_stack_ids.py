"""The local stack's KRaft cluster id: what `kafka-storage format` accepts."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest

from services.stack._services import kafka_cluster_id


def test_an_id_that_would_begin_with_a_dash_is_drawn_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A first byte of 0xF8 to 0xFB encodes to "-" in URL-safe base64: the command line
    # took such an id for an option, and formatting the storage failed (1 time in 64).
    draws: Iterator[uuid.UUID] = iter(
        [uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x01" + bytes(15))]
    )
    monkeypatch.setattr(uuid, "uuid4", lambda: next(draws))
    assert kafka_cluster_id() == "AQAAAAAAAAAAAAAAAAAAAA"


def test_ids_are_22_url_safe_characters_never_led_by_a_dash() -> None:
    for _ in range(2000):
        cluster_id = kafka_cluster_id()
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", cluster_id), cluster_id
