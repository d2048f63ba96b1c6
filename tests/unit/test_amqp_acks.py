"""The RabbitMQ consumer's ack batching (`_Acks`) against a model of the broker's rules.

A channel's deliveries are outstanding until acked; an ack of a tag that is not
outstanding is a protocol error (RabbitMQ closes the channel: PRECONDITION_FAILED,
unknown delivery tag); a `multiple` ack settles every outstanding tag up to its own.
The channel here is a plain object that applies each frame to that model in the order
frames are written, then lets a few turns of the loop pass, as a write that drains
does. Deliveries finish in a random order, some settled another way (a dead letter's
own ack, a hand-back), over many seeds."""

from __future__ import annotations

import asyncio
import random

import pytest

from interceptors._amqp_consumer import _Acks


class ProtocolError(Exception):
    pass


class Channel:
    """The broker's view of one channel's deliveries, fed frame by frame."""

    def __init__(self, tags: range, rng: random.Random) -> None:
        self.outstanding = set(tags)
        self.rng = rng
        self.frames: list[tuple[int, bool]] = []
        self.errors: list[str] = []

    def _apply(self, tag: int, multiple: bool) -> None:
        self.frames.append((tag, multiple))
        if tag not in self.outstanding:
            self.errors.append(f"ack of {tag} (multiple={multiple}): unknown delivery tag")
            raise ProtocolError(self.errors[-1])
        if multiple:
            self.outstanding -= {t for t in self.outstanding if t <= tag}
        else:
            self.outstanding.discard(tag)

    async def _drain(self) -> None:
        for _ in range(self.rng.randrange(4)):
            await asyncio.sleep(0)

    async def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self._apply(delivery_tag, multiple)  # in the stream from here on
        await self._drain()

    async def settle_elsewhere(self, tag: int) -> None:
        """A nack or a dead letter's own ack: its frame first, then it counts as done."""
        self._apply(tag, False)
        await self._drain()


async def scenario(seed: int, n: int) -> Channel:
    rng = random.Random(seed)
    channel = Channel(range(1, n + 1), rng)
    acks = _Acks(channel)
    elsewhere = set(rng.sample(range(1, n + 1), n // 8))

    async def deliver(tag: int) -> None:
        for _ in range(rng.randrange(12)):  # handling takes a few turns, some many
            await asyncio.sleep(0)
        if rng.random() < 0.05:
            for _ in range(rng.randrange(50)):
                await asyncio.sleep(0)
        try:
            if tag in elsewhere:
                await channel.settle_elsewhere(tag)
            else:
                await acks.ack(tag)
        finally:
            acks.done(tag)

    await asyncio.gather(*(deliver(t) for t in range(1, n + 1)), return_exceptions=True)
    for _ in range(60):  # the last flush's frames
        await asyncio.sleep(0)
    return channel


@pytest.mark.parametrize("seed", range(40))
def test_acks_never_ack_a_tag_twice_nor_one_still_handled(seed: int) -> None:
    channel = asyncio.run(scenario(seed, 64))
    assert channel.errors == []
    assert channel.outstanding == set()


def test_deliveries_finished_together_share_one_frame() -> None:
    async def run() -> Channel:
        channel = Channel(range(1, 33), random.Random(0))
        acks = _Acks(channel)
        await asyncio.gather(*(acks.ack(t) for t in range(1, 33)))
        return channel

    channel = asyncio.run(run())
    assert channel.frames == [(32, True)]
    assert channel.outstanding == set()


def test_a_delivery_still_handled_is_not_covered_and_holds_no_one_back() -> None:
    async def run() -> tuple[Channel, _Acks]:
        channel = Channel(range(1, 11), random.Random(0))
        acks = _Acks(channel)
        await asyncio.gather(*(acks.ack(t) for t in (1, 2, 3, 5, 6, 7)))
        assert channel.outstanding == {4, 8, 9, 10}  # 4 is being handled: not covered
        await asyncio.gather(*(acks.ack(t) for t in (4, 8, 9, 10)))
        return channel, acks

    channel, acks = asyncio.run(run())
    assert channel.frames[0] == (3, True)
    assert sorted(channel.frames[1:4]) == [(5, False), (6, False), (7, False)]
    # 4 ends the gap: with 5 to 7 settled alone, 4 and 8 to 10 go as one run.
    assert channel.frames[4:] == [(10, True)]
    assert acks.settled_to == 10
    assert channel.outstanding == set()
