"""Side-by-side benchmarks: eventbus vs the raw clients (aiokafka, aio-pika) vs FastStream.

    uv run python -m benchmarks                    # every scenario, 3 rounds (~15 min)
    uv run python -m benchmarks --quick            # tiny counts, 1 round: the CI smoke run
    uv run python -m benchmarks --only b-kafka-consume,e1-kafka-keyed --rounds 5

Needs Kafka and RabbitMQ (``scripts/brokers up``); URLs from ``--kafka`` / ``--amqp``, else
``EVENTBUS_TEST_KAFKA`` / ``EVENTBUS_TEST_AMQP``, else the local defaults. Prints Markdown
tables and writes everything (every round of every contender, settings, machine, load) to
``--json`` (default ``benchmarks/results/latest.json``). See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import DEFAULT_AMQP, DEFAULT_KAFKA, Settings, run_scenario
from benchmarks.report import load_average, machine_info, print_table

DEFAULT_JSON = Path(__file__).parent / "results" / "latest.json"

QUICK = {
    "rounds": 1,
    "publish_messages": 50,
    "batch_messages": 500,
    "batch_size": 100,
    "kafka_consume_messages": 500,
    "rabbit_consume_messages": 300,
    "rabbit_batch_messages": 300,
    "keyed_messages": 128,
    "latency_seconds": 0.2,
    "requests": 20,
    "concurrent_requests": 64,
    "max_seconds": 20.0,
    "run_timeout": 60.0,
    "warmup": False,
    "quick": True,
}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    from benchmarks.scenarios import SCENARIOS

    keys = [s.key for s in SCENARIOS]
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--quick", action="store_true", help="tiny counts, 1 round (CI smoke)")
    parser.add_argument("--rounds", type=int, help="timed rounds per contender (default 3)")
    parser.add_argument(
        "--messages",
        type=int,
        help="pre-filled messages of the Kafka consume scenarios (default 200000)",
    )
    parser.add_argument("--max-seconds", type=float, help="time cap of one consume run (10)")
    parser.add_argument("--only", help=f"comma-separated scenario keys: {', '.join(keys)}")
    parser.add_argument("--contenders", help="comma-separated contender names to keep")
    parser.add_argument("--kafka", default=os.environ.get("EVENTBUS_TEST_KAFKA", DEFAULT_KAFKA))
    parser.add_argument("--amqp", default=os.environ.get("EVENTBUS_TEST_AMQP", DEFAULT_AMQP))
    parser.add_argument(
        "--profile", type=Path, help="write a pyinstrument report of every timed run here"
    )
    parser.add_argument(
        "--list", action="store_true", help="print the scenarios and contenders as JSON, run none"
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    args = parser.parse_args(argv)
    if args.only:
        unknown = sorted(set(args.only.split(",")) - set(keys))
        if unknown:
            parser.error(f"unknown scenarios {unknown}; choose from {keys}")
    for name in ("rounds", "messages"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1")
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    values: dict[str, Any] = dict(QUICK) if args.quick else {}
    values["kafka_url"] = args.kafka
    values["amqp_url"] = args.amqp
    if args.rounds is not None:
        values["rounds"] = args.rounds
    if args.messages is not None:
        values["kafka_consume_messages"] = args.messages
    if args.max_seconds is not None:
        values["max_seconds"] = args.max_seconds
    if args.profile is not None:
        values["profile_dir"] = str(args.profile)
    return Settings(**values)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.scenarios import SCENARIOS

    settings = settings_from(args)
    only = set(args.only.split(",")) if args.only else None
    contenders = set(args.contenders.split(",")) if args.contenders else None
    results: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "load_before": load_average(),
        "settings": {
            k: v for k, v in dataclasses.asdict(settings).items() if not k.endswith("_url")
        },
        "scenarios": {},
    }
    started = time.perf_counter()
    for scenario in SCENARIOS:
        if only is not None and scenario.key not in only:
            continue
        print(f"\n== {scenario.key}: {scenario.title}  (load {load_average()})", flush=True)
        results["scenarios"][scenario.key] = await run_scenario(
            scenario, settings, only=contenders, log=lambda line: print(line, flush=True)
        )
        results["scenarios"][scenario.key]["load_after"] = load_average()
    results["load_after"] = load_average()
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


def run(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.list:
        from benchmarks.scenarios import SCENARIOS

        listing = {s.key: [c.name for c in s.contenders] for s in SCENARIOS}
        print(json.dumps(listing, indent=2))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    results = asyncio.run(main(args))
    print(
        f"\n## Results ({results['seconds']} s, load before {results['load_before']}, "
        f"after {results['load_after']})"
    )
    print_table(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nJSON: {args.json}")
    failed = [
        f"{key}/{name}"
        for key, scenario in results["scenarios"].items()
        for name, c in scenario["contenders"].items()
        if "error" in c
    ]
    if failed:
        print(f"FAILED contenders: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run())
