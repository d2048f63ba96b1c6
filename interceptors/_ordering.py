"""Order where it matters, concurrency everywhere else: the two structures behind a
concurrent Kafka consumer.

`Lanes` runs jobs one at a time per key and different keys at once, so records of one
conversation are handled in order while other conversations proceed. `OffsetWatermarks`
tracks, per partition, which fetched offsets are still unfinished: the committable
offset is the lowest unfinished one (or one past the last fetched), so a commit never
skips a record that is still being handled, however the lanes interleave."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field

__all__ = ["Lanes", "OffsetWatermarks"]

Job = Callable[[], Awaitable[None]]


@dataclass(slots=True)
class _Lane:
    jobs: deque[Job] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None


class Lanes:
    """One asyncio task per busy key, running that key's jobs in submission order.

    A job's exception is the job's business: it is logged by `on_error` and the lane
    goes on with the next job. `cancel(keys)` stops those lanes: the running job gets
    `CancelledError` and queued jobs are dropped (their records were never finished,
    so their offsets stay uncommitted and are delivered again)."""

    def __init__(self, on_error: Callable[[BaseException], None]) -> None:
        self._lanes: dict[Hashable, _Lane] = {}
        self._on_error = on_error

    def __len__(self) -> int:
        """Busy keys."""
        return len(self._lanes)

    def submit(self, key: Hashable, job: Job) -> None:
        """Queues `job` behind the jobs of `key` (runs at once when the key is idle)."""
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        lane.jobs.append(job)
        if lane.task is None:
            lane.task = asyncio.create_task(self._drive(key, lane), name=f"lane {key!r}")

    async def _drive(self, key: Hashable, lane: _Lane) -> None:
        try:
            while lane.jobs:
                job = lane.jobs.popleft()
                try:
                    await job()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # one job's failure must not stop its key
                    self._on_error(exc)
        finally:
            if self._lanes.get(key) is lane:
                del self._lanes[key]

    def busy(self) -> list[Hashable]:
        """Keys with running or queued jobs."""
        return list(self._lanes)

    async def wait(
        self, keys: Iterable[Hashable] | None = None, timeout: float | None = None
    ) -> bool:
        """Waits until the lanes of `keys` (all when None) are idle; False on timeout."""
        tasks = [
            lane.task
            for k, lane in list(self._lanes.items())
            if lane.task is not None and (keys is None or k in keys)
        ]
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        return not pending

    async def cancel(self, keys: Iterable[Hashable] | None = None) -> None:
        """Cancels the lanes of `keys` (all when None) and waits until they stopped."""
        chosen = set(self._lanes) if keys is None else set(keys) & set(self._lanes)
        tasks = []
        for k in chosen:
            lane = self._lanes.pop(k)
            lane.jobs.clear()
            if lane.task is not None:
                lane.task.cancel()
                tasks.append(lane.task)
        await asyncio.gather(*tasks, return_exceptions=True)


class OffsetWatermarks:
    """Per partition: offsets fetched but not finished, and the committable offset.

    Offsets of one partition are fetched in increasing order (not always contiguous:
    compaction and transaction markers leave gaps), so each partition keeps a queue of
    fetched offsets; finishing the head pops every finished offset behind it. All
    operations are O(1) amortised."""

    def __init__(self) -> None:
        self._fetched: dict[Hashable, deque[int]] = {}
        self._finished: dict[Hashable, set[int]] = {}
        self._next: dict[Hashable, int] = {}
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        """Offsets fetched and not finished, over all partitions."""
        return self._in_flight

    def fetched(self, partition: Hashable, offset: int) -> bool:
        """Records that `offset` was fetched and is about to be handled; False (and
        nothing recorded) when it is not past the last offset fetched from `partition`:
        the client delivered it again while it is in flight or done, so skip it."""
        if offset < self._next.get(partition, offset):
            return False
        self._fetched.setdefault(partition, deque()).append(offset)
        self._finished.setdefault(partition, set())
        self._next[partition] = offset + 1
        self._in_flight += 1
        return True

    def finished(self, partition: Hashable, offset: int) -> None:
        """Records that `offset` is done (handled, a duplicate or dead-lettered)."""
        queue = self._fetched.get(partition)
        if not queue or offset < queue[0]:
            return  # forgotten (revoked) meanwhile, or finished twice: nothing to do
        done = self._finished[partition]
        if offset in done:
            return
        done.add(offset)
        self._in_flight -= 1
        while queue and queue[0] in done:
            done.discard(queue.popleft())

    def committable(self, partition: Hashable) -> int | None:
        """The offset to commit: the lowest unfinished, or one past the last fetched;
        None when nothing was fetched from `partition`."""
        queue = self._fetched.get(partition)
        if queue:
            return queue[0]
        return self._next.get(partition)

    def unfinished(self, partition: Hashable) -> int:
        """Offsets of `partition` fetched and not finished."""
        return len(self._fetched.get(partition, ())) - len(self._finished.get(partition, ()))

    def partitions(self) -> list[Hashable]:
        """Partitions with anything fetched."""
        return list(self._next)

    def forget(self, partition: Hashable) -> None:
        """Drops a partition (revoked or lost): its unfinished offsets are another
        consumer's now."""
        self._in_flight -= self.unfinished(partition)
        self._fetched.pop(partition, None)
        self._finished.pop(partition, None)
        self._next.pop(partition, None)
