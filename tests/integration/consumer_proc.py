"""A consumer process for fault tests: `python -m tests.integration.consumer_proc ...`.

It is what a service is to the consumer runtime (an EventConsumer or TaskConsumer run
until SIGTERM, through the public API), with a handler whose behaviour the test picks
per message by the run id, so tests can kill, stop or terminate it with real signals:

    slow:<ms>:<name>   sleeps <ms> ms (awaiting: other messages go on)
    block:<name>       never finishes until cancelled
    hog:<ms>:<name>    blocks the whole event loop for <ms> ms (a CPU-bound handler)
    fail:<name>        raises a retryable error every time
    anything else      finishes at once

Everything it does is written to Redis under the prefix: `<prefix>started` and
`<prefix>handled` lists (`<run id>|<pid>|<attempt>`), `<prefix>redelivered` (the same
entries, for RabbitMQ deliveries the broker flagged as redelivered), and
`<prefix>ready:<pid>` once it holds partitions (Kafka) or consumes (RabbitMQ). It exits
0 after a graceful stop."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from agentflux.v1 import tasks_pb2

from interceptors import (
    EventConsumer,
    IdempotencyGuard,
    Incoming,
    TaskConsumer,
    Telemetry,
    configure_logging,
)
from services.runtime.adapters.kafka import KafkaConsumer, KafkaProducer
from services.runtime.adapters.rabbitmq import RabbitConnection
from services.runtime.adapters.redis import connect_redis
from services.runtime.config import Settings
from services.runtime.contracts import registry
from services.runtime.lifecycle import stop_on_signals
from services.runtime.topology import task_topology


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transport", choices=["kafka", "amqp"], required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--group", default="group")
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("--max-poll-ms", type=int, default=300_000)
    parser.add_argument("--session-ms", type=int, default=10_000)
    parser.add_argument("--delays", default="200,400")
    return parser.parse_args()


async def main() -> int:
    args = _args()
    settings = Settings(tool_task_retry_delays_ms=[int(d) for d in args.delays.split(",")])
    prefix = args.prefix
    redis = connect_redis(settings)
    telemetry = Telemetry.create("fault-proc")
    guard = IdempotencyGuard(redis, namespace=f"{prefix}guard", lease_s=args.lease)
    pid = os.getpid()

    async def handle(incoming: Incoming) -> bytes:
        run_id: str = getattr(incoming.event, "run_id", "")
        entry = f"{run_id}|{pid}|{incoming.attempt}"
        await redis.rpush(f"{prefix}started", entry)
        if args.transport == "amqp" and incoming.inbound.raw.redelivered:
            await redis.rpush(f"{prefix}redelivered", entry)
        kind, _, rest = run_id.partition(":")
        if kind == "slow":
            await asyncio.sleep(int(rest.split(":")[0]) / 1000)
        elif kind == "block":
            await asyncio.Event().wait()
        elif kind == "hog":
            time.sleep(int(rest.split(":")[0]) / 1000)  # noqa: ASYNC251 - blocking on purpose
        elif kind == "fail":
            raise RuntimeError(f"{run_id} fails")
        await redis.rpush(f"{prefix}handled", entry)
        return b"done"

    stop = asyncio.Event()
    stop_on_signals(stop)
    if args.transport == "kafka":
        kafka = KafkaConsumer(
            settings,
            f"{prefix}{args.group}",
            [f"{prefix}agent.requested"],
            **{"max.poll.interval.ms": args.max_poll_ms, "session.timeout.ms": args.session_ms},
        )
        producer = KafkaProducer(settings)
        consumer = EventConsumer(
            kafka,
            telemetry,
            dead_letters=producer,
            guard=guard,
            topic_prefix=prefix,
            grace_s=args.grace,
            attempts=1,
        )

        async def ready() -> None:
            while not await kafka.assignment():  # noqa: ASYNC110 - no event to wait on
                await asyncio.sleep(0.05)
            await redis.set(f"{prefix}ready:{pid}", "1")

        announce = asyncio.create_task(ready())
        try:
            await consumer.run(handle, stop)
        finally:
            announce.cancel()
            await kafka.close()
            await producer.close()
    else:
        rabbit = await RabbitConnection.connect(settings)
        contract = registry().task(tasks_pb2.ToolTask)
        tasks = TaskConsumer(
            rabbit,
            telemetry,
            contract,
            topology=task_topology(settings, contract, prefix),
            guard=guard,
            grace_s=args.grace,
            prefetch=8,
        )
        running = asyncio.create_task(tasks.run(handle, stop))
        consuming = asyncio.create_task(tasks.consuming.wait())
        await asyncio.wait([running, consuming], return_when=asyncio.FIRST_COMPLETED)
        consuming.cancel()
        if not running.done():
            await redis.set(f"{prefix}ready:{pid}", "1")
        try:
            await running
        finally:
            await rabbit.close()
    telemetry.shutdown()
    await redis.aclose()
    return 0


if __name__ == "__main__":
    configure_logging("fault-proc", "INFO", stream=sys.stderr)
    sys.exit(asyncio.run(main()))
