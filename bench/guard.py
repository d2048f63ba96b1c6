"""The idempotency guard with and without a Bloom filter in front, on the real Redis.

    .venv/bin/python -m bench.guard [--quick] [--json PATH]

The guard claims a key with one `SET key marker NX GET PX`, which also returns a record
already there, so a per-process Bloom filter in front of it (the old design: "maybe" ->
GET first) may save nothing. This measures that, and where a Bloom filter does save work:
in front of a read-only lookup (is this embedding cached?) on a mostly new stream.

Method of bench/hops.py, whose helpers it imports: variants built and warmed up, then
interleaved rounds (order reversed every other round, gc before each); per message
p50/p90/p99, client CPU (process CPU time / messages), serial msgs/s and Redis round
trips, with ratios against the first row of the same run. Keys live under
`bench.<random>.` and are deleted at the end, also on failure. Exit codes: 0 done, 1 a
scenario failed, 2 Redis unreachable or off loopback."""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis

from bench.hops import Plan, Stats, _markdown, log, preflight, purge_redis, quietly
from interceptors import Claim, IdempotencyGuard
from interceptors._bloom import RotatingBloomFilter, optimal_size
from services.runtime import lifecycle
from services.runtime.adapters.redis import connect_redis
from services.runtime.config import Settings

# Messages per variant and scenario: about 75 s in all (--quick: 15 s) on the shared 2-core
# machine at load 1, twice that under load. Many short rounds, so that a neighbour's burst
# spoils one round of one variant, which the median over the rounds then ignores.
PLAN = Plan(n=10_000, rounds=40, warmup=500)
QUICK = Plan(n=2_000, rounds=20, warmup=200)
BATCH = 100  # a consumer's batch of records
SEQ = f"guard {BATCH} begins"
POOL = 1_000  # finished records the duplicates are drawn from
WORKLOADS = {"all new": 0.0, "10% duplicates": 0.1, "all duplicates": 1.0}
BLOOM_CAPACITY, BLOOM_ERROR = 1_000_000, 0.001  # the old guard's defaults
TTL_S, TTL_MS, LEASE_MS = 600, 600_000, 10_000  # LEASE_MS: the guard's default lease
CACHED_SHARE = 0.05  # recompute: most items are new, so their lookup finds nothing
EMBEDDING = os.urandom(1536 * 4)  # one float32 embedding, 6 KiB
Notes = dict[str, Any]
Outcome = tuple[list["Result"], Notes]


@dataclass(slots=True)
class Case:
    """One variant: `op` handles `per_op` messages and returns the Redis round trips it
    made; the other fields add up over the timed rounds."""

    name: str
    op: Callable[[], Awaitable[int]]
    per_op: int = 1
    samples: list[float] = field(default_factory=list)  # ms per message
    cpu_rounds: list[float] = field(default_factory=list)  # µs per message, per round
    msgs: int = 0
    trips: int = 0


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    stats: Stats  # per message, in ms
    cpu_us: float  # client CPU per message: the median over the rounds
    cpu_se: float  # its standard error: the noise of this run
    trips_per_1k: float
    cpu_rounds: list[float]

    @classmethod
    def of(cls, c: Case) -> Result:
        cpu, se = median_se(c.cpu_rounds)
        return cls(c.name, Stats.of(c.samples), cpu, se, c.trips / c.msgs * 1e3, c.cpu_rounds)


def median_se(values: Sequence[float]) -> tuple[float, float]:
    """The median and its standard error, from the MAD: robust to a round that a
    neighbour on the shared machine spoiled."""
    mid = statistics.median(values)
    mad = statistics.median(abs(v - mid) for v in values)
    return mid, 1.2533 * 1.4826 * mad / len(values) ** 0.5


class Stream:
    """Keys of one variant: new ones, or duplicates drawn from the variant's pool, spread
    evenly (every 10th for 10%) and the same for every variant of a scenario."""

    def __init__(self, share: float, pool: Sequence[str], tag: str) -> None:
        self.share, self.pool, self.tag, self.i, self.dups = share, pool, tag, 0, 0

    def next(self) -> str:
        i = self.i = self.i + 1
        if int(i * self.share) != int((i - 1) * self.share):
            self.dups += 1
            return self.pool[i % len(self.pool)]
        return f"{self.tag}{i}"


async def measure(cases: Sequence[Case], plan: Plan) -> list[Result]:
    for c in cases:  # warm-up: untimed, uncounted
        for _ in range(max(1, plan.warmup // c.per_op)):
            await c.op()
    per_round = -(-plan.n // plan.rounds)
    clock, cpu = time.perf_counter_ns, time.process_time_ns
    for r in range(plan.rounds):
        for c in cases if r % 2 == 0 else cases[::-1]:
            ops, op, sink = max(1, -(-per_round // c.per_op)), c.op, c.samples
            gc.collect()  # each variant pays for its own garbage only
            trips, c0 = 0, cpu()
            for _ in range(ops):
                t0 = clock()
                trips += await op()
                sink.append((clock() - t0) / 1e6 / c.per_op)
            c.cpu_rounds.append((cpu() - c0) / 1e3 / (ops * c.per_op))
            c.msgs, c.trips = c.msgs + ops * c.per_op, c.trips + trips
    return [Result.of(c) for c in cases]


async def put_many(client: aioredis.Redis, keys: Sequence[str], value: bytes) -> int:
    """SET PX of each key, pipelined: one round trip (none for no key)."""
    async with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.set(key, value, px=TTL_MS)
        await pipe.execute()  # an empty pipeline sends nothing
    return 1 if keys else 0


async def complete_many(client: aioredis.Redis, guard: IdempotencyGuard, keys: list[str]) -> int:
    """`complete` of each key in one round trip. The guard has no such call yet, so this
    sends what `complete` sends and forgets the claims as `complete` does."""
    for key in keys:
        guard._held.pop(key, None)
    return await put_many(client, [guard.redis_key(k) for k in keys], b"D")


class BloomGuard:
    """The old guard's routing over the new guard: Bloom "maybe" -> GET first, and a
    record found is the answer; Bloom "no" or a wrong "maybe" -> `begin`."""

    def __init__(self, guard: IdempotencyGuard, client: aioredis.Redis) -> None:
        self.guard, self.client = guard, client
        self.bloom = RotatingBloomFilter(BLOOM_CAPACITY, BLOOM_ERROR)
        self.wrong_maybes = self.duplicates = 0

    async def begin(self, key: str) -> tuple[Claim, int]:
        """The claim, and the round trips it took (2 after a wrong "maybe")."""
        trips = 1
        if key in self.bloom:
            record = cast("bytes | None", await self.client.get(self.guard.redis_key(key)))
            if record is not None:
                self.duplicates += 1
                pending = record[:1] == b"P"
                return Claim(key, False, None if pending else record[1:], pending), 1
            self.wrong_maybes += 1
            trips = 2
        claim = await self.guard.begin(key)
        self.bloom.add(key)
        return claim, trips


async def guard_scenario(client: aioredis.Redis, prefix: str, share: float, plan: Plan) -> Outcome:
    """raw, guard, guard+bloom, 100 sequential begins and begin_many(100) on one
    workload; each variant has its own namespace and its own pool of finished records."""
    pool, raw_ns = [f"dup{j}" for j in range(POOL)], prefix + "raw:"
    await put_many(client, [raw_ns + k for k in pool], b"D")
    names = ("raw", "guard", "guard+bloom", SEQ, "guard batch")
    keys = {name: Stream(share, pool, "new") for name in names}
    guards = {
        n: IdempotencyGuard(client, namespace=f"{prefix}v{i}", ttl_s=TTL_S)
        for i, n in enumerate(names[1:])
    }
    for g in guards.values():
        await complete_many(client, g, [c.key for c in await g.begin_many(pool)])
    old = BloomGuard(guards["guard+bloom"], client)
    for key in pool:  # this process handled them, so its filter knows them: the best case
        old.bloom.add(key)

    async def raw() -> int:
        marker = b"P" + uuid.uuid4().bytes  # what the guard writes, so both pay for it
        await client.set(raw_ns + keys["raw"].next(), marker, nx=True, get=True, px=LEASE_MS)
        return 1

    async def guarded() -> int:
        key, guard = keys["guard"].next(), guards["guard"]
        if not (await guard.begin(key)).new:
            return 1
        await guard.complete(key, b"")
        return 2

    async def bloomed() -> int:
        key = keys["guard+bloom"].next()
        claim, trips = await old.begin(key)
        if not claim.new:
            return trips
        await old.guard.complete(key, b"")
        return trips + 1

    async def sequential() -> int:
        guard = guards[SEQ]
        batch = [keys[SEQ].next() for _ in range(BATCH)]
        new = [k for k in batch if (await guard.begin(k)).new]
        return BATCH + await complete_many(client, guard, new)

    async def batched() -> int:
        guard = guards["guard batch"]
        claims = await guard.begin_many([keys["guard batch"].next() for _ in range(BATCH)])
        return 1 + await complete_many(client, guard, [c.key for c in claims if c.new])

    cases = [Case("raw", raw), Case("guard", guarded), Case("guard+bloom", bloomed)]
    cases += [Case(SEQ, sequential, BATCH), Case("guard batch", batched, BATCH)]
    results = await measure(cases, plan)
    # The workload must be what it claims: every duplicate drawn was answered as one.
    for name, g in guards.items():
        found = g.stats.duplicates + (old.duplicates if g is old.guard else 0)
        if found != keys[name].dups:
            raise RuntimeError(f"{name}: {found} duplicates found, {keys[name].dups} drawn")
    notes: Notes = {n: asdict(g.stats) for n, g in guards.items()}
    return results, notes | {
        "bloom": {"duplicates": old.duplicates, "wrong_maybes": old.wrong_maybes}
    }


async def recompute_scenario(client: aioredis.Redis, prefix: str, plan: Plan) -> Outcome:
    """Is this item (an embedding, a tool output) cached? Always GET the cache, or ask a
    Bloom filter of the stored keys first and GET only on "maybe". Computing and storing
    a miss costs the same in both, so it is left out; the filter learns the key."""
    ns, cached = prefix + "cache:", [f"emb{j}" for j in range(POOL // 5)]
    await put_many(client, [ns + k for k in cached], EMBEDDING)
    bloom = RotatingBloomFilter(BLOOM_CAPACITY, BLOOM_ERROR)
    for key in cached:
        bloom.add(key)
    exact_keys, bloom_keys = Stream(CACHED_SHARE, cached, "a"), Stream(CACHED_SHARE, cached, "b")
    hits = {"exact GET": 0, "bloom first": 0}

    async def exact() -> int:
        hits["exact GET"] += await client.get(ns + exact_keys.next()) is not None
        return 1

    async def bloom_first() -> int:
        key = bloom_keys.next()
        if key not in bloom:  # surely never stored: compute it, no lookup
            bloom.add(key)
            return 0
        hits["bloom first"] += await client.get(ns + key) is not None  # else a wrong "maybe"
        return 1

    results = await measure([Case("exact GET", exact), Case("bloom first", bloom_first)], plan)
    if hits != {"exact GET": exact_keys.dups, "bloom first": bloom_keys.dups}:
        raise RuntimeError(f"cache hits {hits} differ from the cached items drawn")
    return results, {"hits": hits, "value_bytes": len(EMBEDDING)}


def bloom_cost(n: int) -> dict[str, float]:
    """CPU per key of the filter alone (the old guard checked and added every message's
    key), on a filter of the old guard's size that already holds `n` keys."""
    bloom = RotatingBloomFilter(BLOOM_CAPACITY, BLOOM_ERROR)
    keys = [f"run-{i}:step-{i % 7}:{uuid.uuid4().hex[:8]}" for i in range(3 * n)]
    for key in keys[:n]:
        bloom.add(key)
    gc.collect()
    cpu, t0 = time.process_time_ns, time.process_time_ns()
    maybes = sum(k in bloom for k in keys[n : 2 * n])
    t1 = cpu()
    for key in keys[2 * n :]:
        bloom.add(key)
    t2 = cpu()
    seen = sum(k in bloom for k in keys[:n])  # a known key: every probe is made
    t3 = cpu()
    bits = 2 * optimal_size(BLOOM_CAPACITY, BLOOM_ERROR / 2)[0]  # two generations
    us = [(b - a) / n / 1e3 for a, b in ((t0, t1), (t1, t2), (t2, t3))]
    cost = dict(zip(("check_new_us", "add_us", "check_seen_us"), us, strict=True))
    return cost | {"false_maybes": maybes / n, "forgotten": n - seen, "memory_mib": bits / 2**23}


def report(tables: dict[str, dict[str, Result]], bloom: dict[str, float], load: str) -> str:
    parts = []
    for name, results in tables.items():
        raw = next(iter(results.values()))
        base = "always GET" if name == "recompute" else "a bare SET NX GET PX"
        parts += [f"\n{name}: per message, one at a time; ratios against {base}"]
        header = ("variant", "p50 µs", "p90 µs", "p99 µs", "p50 ratio", "p99 ratio", "CPU µs")
        body = [
            (
                *(r.name, *(f"{v * 1e3:.1f}" for v in (r.stats.p50, r.stats.p90, r.stats.p99))),
                *(f"{r.stats.p50 / raw.stats.p50:.2f}x", f"{r.stats.p99 / raw.stats.p99:.2f}x"),
                *(f"{r.cpu_us:.1f} ± {r.cpu_se:.1f}", f"{r.cpu_us / raw.cpu_us:.2f}x"),
                *(f"{r.stats.ops_per_s:,.0f}", f"{r.trips_per_1k:,.0f}"),
            )
            for r in results.values()
        ]
        parts.append(_markdown((*header, "CPU ratio", "msgs/s", "trips/1000"), body))
    parts.append(
        f"\nBloom filter alone ({BLOOM_CAPACITY:,} keys at {BLOOM_ERROR}), CPU per key: "
        f"check of a new key {bloom['check_new_us']:.2f} µs, of a seen key "
        f"{bloom['check_seen_us']:.2f} µs, add {bloom['add_us']:.2f} µs; "
        f"{bloom['memory_mib']:.1f} MiB per process. {load}"
    )
    if len(tables) == len(WORKLOADS) + 1:  # a conclusion needs every scenario
        parts.append("\n" + conclusion(tables, bloom))
    return "\n".join(parts)


def conclusion(tables: dict[str, dict[str, Result]], bloom: dict[str, float]) -> str:
    """One paragraph; every figure and every verdict comes from this run."""
    pairs = [(tables[w]["guard+bloom"], tables[w]["guard"]) for w in WORKLOADS]
    saved = [new.trips_per_1k - old.trips_per_1k for old, new in pairs]
    # Paired by round (the two ran back to back), so a load that drifts over the run
    # cancels out; a difference under twice its standard error is noise, not a finding.
    diffs = [
        median_se([a - b for a, b in zip(old.cpu_rounds, new.cpu_rounds, strict=True)])
        for old, new in pairs
    ]
    cpu, noise = [d for d, _ in diffs], [2 * e for _, e in diffs]
    seq, batch = tables["all new"][SEQ], tables["all new"]["guard batch"]
    cost = bloom["check_new_us"] + bloom["add_us"]
    exact, first = tables["recompute"]["exact GET"], tables["recompute"]["bloom first"]
    text = (
        "In front of the guard, the Bloom filter saved {:.0f}, {:.0f} and {:.0f} Redis round "
        "trips per 1000 messages (all new, 10% and all duplicates). ".format(*saved)
        + f"It costs {cost:.1f} µs of CPU per message "
        f"(check and add, timed alone) and {bloom['memory_mib']:.1f} MiB per process; end to "
        "end, client CPU per message changed by "
        + ", ".join(f"{d:+.0f} ± {e:.0f}" for d, e in zip(cpu, noise, strict=True))
        + " µs"
    )
    if -cpu[2] > noise[2]:  # the GET of a known duplicate is cheaper than SET NX GET
        text += (
            f". On a duplicate this process handled before, its GET costs the client "
            f"{-cpu[2]:.0f} µs less than SET NX GET, so it saves CPU only beyond "
            f"{cost / (cost - cpu[2]):.0%} such duplicates (a redelivery to another consumer "
            "finds its filter empty), and never a round trip. "
        )
    elif all(abs(d) <= e for d, e in zip(cpu, noise, strict=True)):
        text += ", within this run's noise. "
    else:
        text += ". "
    text += (
        "SET NX GET already returns an existing record in its one round trip, so the "
        'filter\'s "no" cannot save the claim and its "maybe" only swaps it for a GET: it '
        "stays out of the guard. "
        if max(saved) <= 0.5
        else "It saved round trips, which SET NX GET should rule out: look into it. "
    )
    return text + (
        f"Batching is what saves round trips: begin_many claims {BATCH} new keys in one, at "
        f"{batch.stats.mean / seq.stats.mean:.2f}x the time and {batch.cpu_us / seq.cpu_us:.2f}x "
        f"the CPU per message of {BATCH} sequential begins. Where the filter pays: checking a "
        f"cache on a stream of {1 - CACHED_SHARE:.0%} new items, it skipped "
        f"{exact.trips_per_1k - first.trips_per_1k:.0f} of 1000 GETs; the mean time per item "
        f"went from {exact.stats.mean * 1e3:.0f} to {first.stats.mean * 1e3:.0f} µs and "
        f"client CPU from {exact.cpu_us:.0f} to {first.cpu_us:.0f} µs. Keep it in front of "
        'read-only lookups whose "no" skips work (cached embeddings, tool outputs), not in '
        "front of a claim that writes anyway."
    )


async def run(args: argparse.Namespace) -> int:
    settings = Settings()
    if problems := await preflight(settings, ["guard"]):
        for problem in problems:
            log(f"cannot run: {problem}")
        return 2
    plan = QUICK if args.quick else PLAN
    prefix = f"bench.{uuid.uuid4().hex[:8]}."
    started, load_start = datetime.now(UTC), os.getloadavg()
    log(f"guard bench: {plan.n} messages per variant in {plan.rounds} rounds; keys {prefix}*")
    client = connect_redis(settings)
    scenarios: dict[str, Callable[[str], Awaitable[Outcome]]] = {
        name: functools.partial(guard_scenario, client, share=share, plan=plan)
        for name, share in WORKLOADS.items()
    }
    scenarios["recompute"] = functools.partial(recompute_scenario, client, plan=plan)
    tables: dict[str, dict[str, Result]] = {}
    notes: Notes = {}
    failures: dict[str, str] = {}
    try:
        for i, (name, scenario) in enumerate(scenarios.items()):
            log(f"{name} ...")
            try:
                results, notes[name] = await scenario(f"{prefix}{i}.")
                tables[name] = {r.name: r for r in results}
            except Exception as exc:  # reported; the other scenarios still run
                failures[name] = repr(exc)
    finally:  # also on failure or Ctrl-C: nothing of the bench stays in Redis
        await quietly(f"Redis keys {prefix}*", purge_redis(client, prefix))
        await client.aclose()
    bloom, load_end = bloom_cost(plan.n * 10), os.getloadavg()
    load = f"{started:%F}, {os.cpu_count()} CPUs, load {load_start[0]:.2f} -> {load_end[0]:.2f}."
    print(report(tables, bloom, load))
    for name, error in failures.items():
        print(f"\nFAILED {name}: {error}")
    if args.json:
        machine: Notes = {"cpus": os.cpu_count(), "python": platform.python_version()}
        machine |= {"platform": platform.platform(), "loadavg": [load_start, load_end]}
        doc: Notes = {"started": started.isoformat(), "quick": args.quick, "plan": asdict(plan)}
        doc |= {"machine": machine, "bloom": bloom, "notes": notes, "failures": failures}
        doc["scenarios"] = {n: [asdict(r) for r in t.values()] for n, t in tables.items()}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.guard",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="fewer messages per variant")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    try:
        # On the loop `agentflux serve` runs on (AGENTFLUX_EVENT_LOOP): what a service's
        # clients and consumers get.
        return lifecycle.run(run(parser.parse_args(argv)), Settings().event_loop)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
