"""`ensure_kafka_topics` returns only once the topics have leaders: the wait's logic,
against a plain object standing in for the admin client's metadata answers."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from services.runtime.topology import _await_leaders


def _metadata(**topics: list[int]) -> Any:
    """Metadata whose topics have partitions led by the given broker ids (-1: none)."""
    return SimpleNamespace(
        topics={
            name: SimpleNamespace(
                error=None,
                partitions={
                    i: SimpleNamespace(leader=leader, error=None) for i, leader in enumerate(ls)
                },
            )
            for name, ls in topics.items()
        }
    )


class _Admin:
    """Answers `list_topics` with each of `answers` in turn, the last one for ever."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.calls = 0

    def list_topics(self, timeout: float) -> Any:
        self.calls += 1
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


async def test_waits_until_every_partition_has_a_leader() -> None:
    admin = _Admin(
        _metadata(a=[1]),  # b not known yet
        _metadata(a=[1], b=[-1, 1]),  # b known, one partition without a leader
        _metadata(a=[1], b=[1, 1]),
    )
    await _await_leaders(admin, ["a", "b"], timeout=5)  # type: ignore[arg-type]
    assert admin.calls == 3


async def test_gives_up_naming_the_topics_without_leaders() -> None:
    admin = _Admin(_metadata(a=[1], b=[-1]))
    said = r"without a leader for every partition after 0.05 s: b$"
    with pytest.raises(TimeoutError, match=said):
        await _await_leaders(admin, ["a", "b"], timeout=0.05)  # type: ignore[arg-type]
