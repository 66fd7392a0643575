"""Rounds, interleaving, statistics, the table and the JSON: everything that is not a broker.

A `Scenario` lists `Contender`s. `run_scenario` runs one untimed warm-up of every contender,
then ``rounds`` rounds; each round runs every contender once, back to back, in an order rotated
by one each round (A B C, B C A, C A B, ...) so that background noise and slow drifts (page
cache, broker compaction, other processes) hit every contender alike.

Reported per contender: the median throughput over the rounds (with min and max), latency
percentiles over the samples of all rounds pooled, and the ratio to the contender's baseline
(usually the raw client) as the median of the per-round ratios: each ratio compares two runs
taken seconds apart, which cancels most of the drift between rounds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import math
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "DEFAULT_AMQP",
    "DEFAULT_KAFKA",
    "Contender",
    "Measurement",
    "Run",
    "Scenario",
    "Settings",
    "Target",
    "percentile",
    "run_scenario",
]


RETRY_PAUSE = 15.0
"""Seconds to wait before retrying a failed run (long enough for a broker restart)."""

DEFAULT_KAFKA = "kafka://127.0.0.1:9092"
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"


@dataclass(frozen=True, slots=True)
class Settings:
    """What the whole run uses; every contender reads its counts from here."""

    kafka_url: str = DEFAULT_KAFKA
    amqp_url: str = DEFAULT_AMQP
    rounds: int = 3
    message_size: int = 100
    publish_messages: int = 2_000
    """Messages per run of a publish that waits for each confirm in turn."""
    batch_messages: int = 50_000
    """Messages per run of a batched (pipelined) publish."""
    batch_size: int = 1_000
    kafka_consume_messages: int = 200_000
    rabbit_consume_messages: int = 20_000
    rabbit_batch_messages: int = 20_000
    prefetch: int = 200
    partitions: int = 6
    keyed_messages: int = 2_000
    keys: int = 64
    handler_seconds: float = 0.002
    latency_rate: float = 1_000.0
    latency_seconds: float = 5.0
    requests: int = 500
    """Requests per run of a request-reply scenario, one in flight at a time."""
    concurrent_requests: int = 1_000
    """Requests per run with several callers at once (``in_flight`` in the scenario)."""
    max_seconds: float = 10.0
    """A consume run stops after this long (the slow contenders); throughput is over what it
    handled by then, and the JSON says how many that was."""
    run_timeout: float = 300.0
    """A run taking longer than this (a broker restarted under it, say) fails instead of
    hanging the whole benchmark."""
    warmup: bool = True
    """One untimed run of every contender (a tenth of the messages) before the rounds."""
    quick: bool = False
    profile_dir: str | None = None
    """Profile every timed run with pyinstrument and write its text report here."""

    @property
    def kafka_bootstrap(self) -> str:
        return self.kafka_url.removeprefix("kafka://").split("?", 1)[0].rstrip("/")


@dataclass(slots=True)
class Measurement:
    """One timed run: ``messages`` in ``seconds``; optional latency samples (seconds) and the
    CPU time the whole process used meanwhile (less sensitive to a busy machine than wall
    time, though a contender's background work outside the window is not in it)."""

    messages: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    cpu: float | None = None

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Run:
    """Handed to a contender: the settings, how many messages, and fresh names."""

    settings: Settings
    messages: int
    tag: str
    warmup: bool = False

    def name(self, what: str) -> str:
        """A topic/queue/group name used by this run only."""
        return f"bench.{what}.{self.tag}"


RunFn = Callable[[Run], Awaitable[Measurement]]


@dataclass(frozen=True, slots=True)
class Contender:
    name: str
    run: RunFn
    baseline: str | None = None
    """Name of the contender this one's ratio is computed against (None: no ratio)."""
    messages: Callable[[Settings], int] | None = None
    """Messages per run; None uses the scenario's."""
    note: str = ""


@dataclass(frozen=True, slots=True)
class Target:
    """A goal from issue 7, checked against the results (reported, never asserted)."""

    label: str
    contender: str
    kind: Literal["ratio_to", "p99_ms"]
    value: float
    other: str | None = None
    """For ``ratio_to``: the contender compared with (e.g. FastStream)."""


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str
    title: str
    broker: Literal["kafka", "amqp"]
    contenders: Sequence[Contender]
    messages: Callable[[Settings], int]
    settings: Callable[[Settings], dict[str, Any]]
    latency: Literal["none", "call", "end-to-end", "round-trip"] = "none"
    targets: Sequence[Target] = ()
    warmup: bool = True
    """False: no untimed run before the rounds (each run warms itself up)."""


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


async def _one(contender: Contender, run: Run) -> Measurement:
    gc.collect()
    profiler = None
    if run.settings.profile_dir and not run.warmup:
        from pyinstrument import Profiler

        # The whole thread is sampled: every task of the event loop, setup included (the
        # pre-filling shows up as its own subtree).
        profiler = Profiler(interval=0.0005, async_mode="disabled")
        profiler.start()
    started = time.perf_counter()
    limit = asyncio.timeout(run.settings.run_timeout)
    try:
        async with limit:
            measurement = await contender.run(run)
    except TimeoutError:
        if limit.expired():
            limit_s = run.settings.run_timeout
            raise TimeoutError(f"no result within run_timeout={limit_s}s") from None
        raise
    finally:
        if profiler is not None:
            profiler.stop()
            out = Path(run.settings.profile_dir) / f"{run.tag}.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(profiler.output_text(unicode=True, show_all=False))
    measurement.extra.setdefault("wall_seconds", round(time.perf_counter() - started, 3))
    return measurement


async def run_scenario(
    scenario: Scenario,
    settings: Settings,
    *,
    only: set[str] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Warm up, run the rounds interleaved, and summarise. Returns the scenario's JSON.

    A run that fails (typically: someone restarted the broker under it) is retried once on
    fresh topics after ``RETRY_PAUSE`` seconds; the retry is counted in the JSON. A second
    failure drops that contender from the scenario, with the error in the JSON; the others
    go on."""
    contenders = [c for c in scenario.contenders if only is None or c.name in only]
    runs: dict[str, list[Measurement]] = {c.name: [] for c in contenders}
    errors: dict[str, str] = {}
    retries: dict[str, list[str]] = {}
    suffix = uuid.uuid4().hex[:6]

    def messages(contender: Contender) -> int:
        return (contender.messages or scenario.messages)(settings)

    # Warm-ups need not run long: they only warm imports, connections and caches.
    warm_settings = dataclasses.replace(settings, max_seconds=min(settings.max_seconds, 3.0))

    async def attempt(contender: Contender, count: int, label: str, warmup: bool) -> Measurement:
        for n in (1, 2):
            tag = f"{scenario.key}.{_slug(contender.name)}.{label}.{suffix}{'' if n == 1 else 'b'}"
            run = Run(warm_settings if warmup else settings, count, tag, warmup)
            try:
                return await _one(contender, run)
            except Exception as exc:
                error = f"{label}: {type(exc).__name__}: {exc}"
                if n == 2:
                    raise RuntimeError(error) from exc
                retries.setdefault(contender.name, []).append(error)
                log(f"  retry    {contender.name} in {RETRY_PAUSE:g} s after {error}")
                await asyncio.sleep(RETRY_PAUSE)
        raise AssertionError("unreachable")

    for contender in contenders if settings.warmup and scenario.warmup else ():
        count = max(10, messages(contender) // 10)
        log(f"  warm-up  {contender.name} ({count} messages)")
        try:
            await attempt(contender, count, "warm-up", True)
        except Exception as exc:  # a broken contender must not hide the others' numbers
            errors[contender.name] = str(exc)
            log(f"  FAILED   {contender.name}: {exc}")

    live = [c for c in contenders if c.name not in errors]
    for round_ in range(settings.rounds):
        shift = round_ % len(live) if live else 0
        for contender in live[shift:] + live[:shift]:
            if contender.name in errors:
                continue
            try:
                m = await attempt(contender, messages(contender), f"r{round_ + 1}", False)
            except Exception as exc:
                errors[contender.name] = str(exc)
                log(f"  FAILED   {contender.name}: {exc}")
                continue
            m.extra["round"] = round_ + 1
            runs[contender.name].append(m)
            lat = ""
            if m.latencies:
                lat = (
                    f"  p50 {percentile(m.latencies, 50) * 1e3:.2f} ms"
                    f"  p99 {percentile(m.latencies, 99) * 1e3:.2f} ms"
                )
            cpu = f"  cpu {m.cpu / m.messages * 1e6:.0f} us/msg" if m.cpu and m.messages else ""
            log(
                f"  round {round_ + 1}  {contender.name:<38} {m.rate:>10,.0f} msg/s"
                f"  ({m.messages} in {m.seconds:.2f} s){cpu}{lat}"
            )
    summary = _summarise(scenario, settings, contenders, runs, errors)
    for name, failures in retries.items():
        summary["contenders"][name]["retried_after"] = failures
    return summary


def _summarise(
    scenario: Scenario,
    settings: Settings,
    contenders: Sequence[Contender],
    runs: dict[str, list[Measurement]],
    errors: dict[str, str],
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for contender in contenders:
        ms = runs[contender.name]
        entry: dict[str, Any] = {
            "baseline": contender.baseline,
            "note": contender.note,
            "rounds": [
                {
                    "messages": m.messages,
                    "seconds": round(m.seconds, 4),
                    "msgs_per_s": round(m.rate, 1),
                    **(
                        {"cpu_us_per_msg": round(m.cpu / m.messages * 1e6, 1)}
                        if m.cpu is not None and m.messages
                        else {}
                    ),
                    **(
                        {"p50_ms": _ms(m.latencies, 50), "p99_ms": _ms(m.latencies, 99)}
                        if m.latencies
                        else {}
                    ),
                    **m.extra,
                }
                for m in ms
            ],
        }
        if contender.name in errors:
            entry["error"] = errors[contender.name]
        if ms:
            rates = [m.rate for m in ms]
            entry["msgs_per_s"] = round(statistics.median(rates), 1)
            entry["min_msgs_per_s"] = round(min(rates), 1)
            entry["max_msgs_per_s"] = round(max(rates), 1)
            cpus = [m.cpu / m.messages * 1e6 for m in ms if m.cpu is not None and m.messages]
            if cpus:
                entry["cpu_us_per_msg"] = round(statistics.median(cpus), 1)
            pooled = [x for m in ms for x in m.latencies]
            if pooled:
                entry["latency_samples"] = len(pooled)
                for q in (50, 90, 99, 99.9):
                    entry[f"p{q:g}_ms"] = _ms(pooled, q)
                entry["max_ms"] = round(max(pooled) * 1e3, 3)
        results[contender.name] = entry

    for contender in contenders:
        if contender.baseline is not None:
            ratio = _paired_ratio(runs[contender.name], runs.get(contender.baseline, []))
            if ratio is not None:
                results[contender.name]["ratio"] = round(ratio, 3)

    return {
        "title": scenario.title,
        "broker": scenario.broker,
        "settings": scenario.settings(settings),
        "latency": scenario.latency,
        "contenders": results,
        "targets": [_check(t, runs) for t in scenario.targets],
    }


def _paired_ratio(runs: list[Measurement], base: list[Measurement]) -> float | None:
    """Median over rounds of this round's rate / the baseline's rate in the same round."""
    by_round = {m.extra["round"]: m for m in base}
    pairs = [
        m.rate / b.rate
        for m in runs
        if (b := by_round.get(m.extra["round"])) is not None and b.rate > 0
    ]
    return statistics.median(pairs) if pairs else None


def _check(target: Target, runs: dict[str, list[Measurement]]) -> dict[str, Any]:
    mine = runs.get(target.contender, [])
    out: dict[str, Any] = {
        "label": target.label,
        "goal": target.value,
        "contender": target.contender,
    }
    measured: float | None = None
    if target.kind == "p99_ms":
        pooled = [x for m in mine for x in m.latencies]
        measured = percentile(pooled, 99) * 1e3 if pooled else None
        met = measured is not None and measured <= target.value
    else:
        assert target.other is not None
        measured = _paired_ratio(mine, runs.get(target.other, []))
        met = measured is not None and measured >= target.value
    out["measured"] = None if measured is None else round(measured, 3)
    out["met"] = bool(met)
    return out


def _ms(samples: Sequence[float], q: float) -> float:
    return round(percentile(samples, q) * 1e3, 3)


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")
