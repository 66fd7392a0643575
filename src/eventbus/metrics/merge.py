"""One exposition from several: what ``eventbus run --workers N`` serves from its parent.

Each worker process counts only what it handled, so counters, histograms and in-flight gauges
add up. Consumer lag, queue depth and the age of the oldest unsettled message are facts about
the broker or the slowest worker, which several workers may report at once: the largest wins.
So does a circuit breaker's state (each worker has its own): open if any worker's is open.
Saturation is recomputed from the summed in-flight and limit (a sum of ratios means nothing).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from eventbus.metrics.collector import BREAKER_STATE, LAG, QUEUE_DEPTH

__all__ = ["merge", "render"]

MAXIMUM = frozenset({LAG, QUEUE_DEPTH, BREAKER_STATE, "eventbus_oldest_unsettled_age_seconds"})
SATURATION = "eventbus_in_flight_saturation_ratio"

_Key = tuple[str, tuple[tuple[str, str], ...]]


def merge(texts: Iterable[str]) -> list[Metric]:
    """The families of every exposition in ``texts``, their samples merged by name and labels."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[_Key, float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            merged = values[family.name]
            largest = family.name in MAXIMUM
            for s in family.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                old = merged.get(key)
                if old is None:
                    merged[key] = s.value
                else:
                    merged[key] = max(old, s.value) if largest else old + s.value
    if SATURATION in values:
        current = values.get("eventbus_in_flight_messages", {})
        limit = values.get("eventbus_in_flight_limit", {})
        for _, labels in list(values[SATURATION]):
            now = current.get(("eventbus_in_flight_messages", labels), 0.0)
            bound = limit.get(("eventbus_in_flight_limit", labels), 0.0)
            values[SATURATION][(SATURATION, labels)] = now / bound if bound else 0.0
    for name, family in families.items():
        for (sample, labels), value in values[name].items():
            family.add_sample(sample, dict(labels), value)
    return list(families.values())


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def render(families: list[Metric]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families))
    return generate_latest(registry)
