"""What deduplication costs per message, for each store, against no dedup.

Two measurements:

- ``store``: the store calls one message costs the dispatcher -- ``claim`` then ``complete``
  (for ``postgres-inbox``: ``claim``, then an inbox transaction around an empty handler) --
  one message at a time (latency) and from many tasks at once (throughput);
- ``bus``: messages through an `EventBus` on the in-memory transport with a no-op handler
  (``concurrency`` tasks), without dedup and with each store; the overhead per message is the
  difference in wall time divided by the number of messages.

Usage (brokers from ``eval "$(scripts/brokers up redis postgres && scripts/brokers env)"``)::

    uv run python benchmarks/dedup_overhead.py [--messages 2000] [--concurrency 16]
        [--stores memory,sqlite,redis,postgres,postgres-inbox] [--json out.json]

Redis and PostgreSQL URLs come from ``--redis-url`` / ``--postgres-url`` or the
``EVENTBUS_TEST_REDIS`` / ``EVENTBUS_TEST_POSTGRES`` variables; a store without a URL is skipped.
Results go to stdout (a table) and, with ``--json``, to a file (``benchmarks/results/`` is
ignored by git).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

try:
    import asyncpg  # type: ignore[import-untyped, unused-ignore]
except ImportError:  # only the postgres-inbox run needs it
    asyncpg = None

from eventbus import Delivery, EventBus
from eventbus.dedup.base import ClaimResult, DedupStore
from eventbus.dedup.memory import MemoryDedupStore

ALL_STORES = ("memory", "sqlite", "redis", "postgres", "postgres-inbox")
LEASE = 300.0
TTL = 3600.0
WARM_UP = 50


def make_store(kind: str, args: argparse.Namespace, tmp: Path) -> DedupStore | None:
    if kind == "memory":
        return MemoryDedupStore()
    if kind == "sqlite":
        from eventbus.dedup.sqlite import SqliteDedupStore

        return SqliteDedupStore(tmp / f"bench-{uuid.uuid4().hex[:6]}.sqlite3")
    if kind == "redis":
        if not args.redis_url:
            return None
        from eventbus.dedup.redis import RedisDedupStore

        return RedisDedupStore(args.redis_url)
    if not args.postgres_url:
        return None
    from eventbus.dedup.postgres import PostgresDedupStore

    return PostgresDedupStore(args.postgres_url, max_pool_size=args.concurrency + 2)


async def one_message(kind: str, store: DedupStore, scope: str, key: str) -> None:
    owner = uuid.uuid4().hex
    if await store.claim(scope, key, owner=owner, lease=LEASE) is not ClaimResult.CLAIMED:
        raise RuntimeError(f"{kind}: fresh key {key} was not claimable")
    if kind == "postgres-inbox":
        async with store.inbox(scope, key, owner=owner, ttl=TTL):  # type: ignore[attr-defined]
            pass
    else:
        await store.complete(scope, key, owner=owner, ttl=TTL)


async def bench_store(kind: str, store: DedupStore, n: int, concurrency: int) -> dict[str, Any]:
    scope = f"bench-{uuid.uuid4().hex[:8]}/g"
    for i in range(50):  # warm up: connections, prepared statements, table creation
        await one_message(kind, store, scope, f"warm{i}")

    latencies = []
    for i in range(n):
        started = time.perf_counter()
        await one_message(kind, store, scope, f"seq{i}")
        latencies.append(time.perf_counter() - started)

    keys = iter(range(n))

    async def worker() -> None:
        for i in keys:
            await one_message(kind, store, scope, f"par{i}")

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "p50_us": statistics.median(latencies) * 1e6,
        "p99_us": latencies[int(len(latencies) * 0.99) - 1] * 1e6,
        "mean_us": statistics.fmean(latencies) * 1e6,
        "concurrent_msgs_per_s": n / elapsed,
    }


async def bench_bus(kind: str, store: DedupStore | None, n: int, concurrency: int) -> float:
    """Seconds to push ``n`` messages through a no-op handler."""
    url = f"memory://bench-{uuid.uuid4().hex[:8]}"
    bus = EventBus(url, dedup_store=store)
    handled = 0
    warm, done = anyio.Event(), anyio.Event()

    def count() -> None:
        nonlocal handled
        handled += 1
        if handled == WARM_UP:
            warm.set()
        elif handled == WARM_UP + n:
            done.set()

    subscribe = bus.subscribe("bench", group="g", concurrency=concurrency, dedup=store is not None)
    if kind == "postgres-inbox":
        # (asyncpg is imported at module level: handler annotations resolve in module globals)
        @subscribe
        async def handle_in_inbox(
            payload: bytes, delivery: Delivery, conn: asyncpg.Connection
        ) -> None:
            count()

    else:

        @subscribe
        async def handle(payload: bytes, delivery: Delivery) -> None:
            count()

    async with bus:
        await bus.publish_many("bench", [b"x"] * WARM_UP)
        await warm.wait()
        started = time.perf_counter()
        await bus.publish_many("bench", [b"x"] * n)
        await done.wait()
        return time.perf_counter() - started


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "messages": args.messages,
        "concurrency": args.concurrency,
        "python": sys.version.split()[0],
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "store": {},
        "bus": {},
    }
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        repeats: dict[str, list[float]] = {"none": []}
        for _ in range(args.repeats):
            repeats["none"].append(await bench_bus("none", None, args.messages, args.concurrency))
        for kind in args.stores:
            store = make_store(kind, args, tmp)
            if store is None:
                print(f"skipping {kind}: no URL (see --help)", file=sys.stderr)
                continue
            try:
                results["store"][kind] = await bench_store(
                    kind, store, args.messages, args.concurrency
                )
                repeats[kind] = [
                    await bench_bus(kind, store, args.messages, args.concurrency)
                    for _ in range(args.repeats)
                ]
            finally:
                await store.close()
    baseline = min(repeats["none"])
    for kind, times in repeats.items():
        best = min(times)
        results["bus"][kind] = {
            "msgs_per_s": args.messages / best,
            "us_per_msg": best / args.messages * 1e6,
            "overhead_us_per_msg": (best - baseline) / args.messages * 1e6,
        }
    return results


def report(results: dict[str, Any]) -> None:
    print(
        f"\ndedup overhead: {results['messages']} messages, concurrency {results['concurrency']},"
        f" Python {results['python']}, {results['machine']}\n"
    )
    print("store calls per message (claim + complete, or claim + inbox transaction)")
    print(f"  {'store':<16}{'p50 µs':>10}{'p99 µs':>10}{'msgs/s @conc':>14}")
    for kind, r in results["store"].items():
        print(
            f"  {kind:<16}{r['p50_us']:>10.0f}{r['p99_us']:>10.0f}"
            f"{r['concurrent_msgs_per_s']:>14.0f}"
        )
    print("\nthrough the bus (memory transport, no-op handler)")
    print(f"  {'dedup':<16}{'msgs/s':>10}{'µs/msg':>10}{'overhead µs/msg':>17}")
    for kind, r in results["bus"].items():
        print(
            f"  {kind:<16}{r['msgs_per_s']:>10.0f}{r['us_per_msg']:>10.1f}"
            f"{r['overhead_us_per_msg']:>17.1f}"
        )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="bus runs per store (best kept)")
    parser.add_argument("--stores", type=_stores, default=list(ALL_STORES))
    parser.add_argument("--redis-url", default=os.environ.get("EVENTBUS_TEST_REDIS"))
    parser.add_argument("--postgres-url", default=os.environ.get("EVENTBUS_TEST_POSTGRES"))
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.messages < 100 or args.concurrency < 1 or args.repeats < 1:
        parser.error("--messages must be >= 100, --concurrency and --repeats >= 1")
    return args


def _stores(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(ALL_STORES))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown stores {unknown}; choose from {ALL_STORES}")
    return kinds


def run(argv: list[str] | None = None, out: Callable[[dict[str, Any]], None] = report) -> None:
    args = parse(argv)
    results = anyio.run(main, args)
    out(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    run()
