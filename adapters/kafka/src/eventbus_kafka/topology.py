"""Names of the Kafka topics and consumer groups eventbus uses (the adapter README lists them).

- topic ``T``, group ``G``: consumer group ``G`` reads ``T`` and its retry topic ``T.G.retry``
  (retries through the broker and dead-letter replays for that group only).
- queue ``Q`` (dead-letter queues ``T.G.dlq`` too): consumer group ``eventbus.queue.Q`` reads
  ``Q`` and ``Q.retry``.
- broadcast (group None): no consumer group; every partition of ``T`` from its end.
- scheduled messages with a second or more left (`eventbus.transports.scheduling`): delay tier
  topics ``eventbus.delay.<seconds>s``, read by consumer group ``eventbus-scheduler`` (the
  forwarder of every started bus).
"""

from __future__ import annotations

import re

from eventbus.errors import ConfigurationError
from eventbus.transports.base import Destination, Kind, SubscriptionSpec

__all__ = [
    "QUEUE_GROUP_PREFIX",
    "SCHEDULER_GROUP",
    "consumer_group",
    "destination_topic",
    "retry_topic",
    "subscribed_topics",
    "tier_topic",
    "validate_name",
]

QUEUE_GROUP_PREFIX = "eventbus.queue."
SCHEDULER_GROUP = "eventbus-scheduler"
"""The consumer group of the delay tiers' forwarders: one per cluster, every bus a member."""
_LEGAL = re.compile(r"[A-Za-z0-9._-]+")
_MAX_TOPIC = 249


def validate_name(name: str, what: str = "topic") -> str:
    """Kafka topic names allow letters, digits, ``.``, ``_`` and ``-``, up to 249 characters.
    Group names are checked the same way because they become part of retry topic names."""
    if not name or not _LEGAL.fullmatch(name) or name in (".", ".."):
        raise ConfigurationError(
            f"invalid Kafka {what} name {name!r}: use letters, digits, '.', '_' and '-'"
        )
    if len(name) > _MAX_TOPIC:
        raise ConfigurationError(f"Kafka {what} name {name[:40]!r}... is longer than 249 chars")
    return name


def retry_topic(name: str, kind: Kind, group: str | None) -> str:
    """Where delayed and group-targeted messages of ``name`` wait."""
    topic = f"{name}.retry" if kind == "queue" or group is None else f"{name}.{group}.retry"
    return validate_name(topic)


def tier_topic(seconds: int) -> str:
    """The delay tier where every record waits ``seconds`` after it was written."""
    return f"eventbus.delay.{seconds}s"


def destination_topic(to: Destination) -> str:
    """The Kafka topic a publish goes to: the retry topic when it targets one group (topics)
    or has a due time (``not_before``): then a queue's main topic does not wait behind it. A
    delayed topic publish without a group is meant for every group, so it goes to the main
    topic, whose partition then waits (paused) until it is due: only for what is due within
    the shortest delay tier (longer delays go through the tiers first)."""
    validate_name(to.name)
    if to.kind == "queue":
        return retry_topic(to.name, "queue", None) if to.not_before is not None else to.name
    if to.group is not None:
        validate_name(to.group, "group")
        return retry_topic(to.name, "topic", to.group)
    return to.name


def consumer_group(spec: SubscriptionSpec) -> str | None:
    if spec.kind == "queue":
        return QUEUE_GROUP_PREFIX + spec.name
    return spec.group


def subscribed_topics(spec: SubscriptionSpec) -> list[str]:
    """The Kafka topics a subscription reads (a broadcast has no retry topic: no group to
    target)."""
    validate_name(spec.name)
    if spec.kind == "queue":
        return [spec.name, retry_topic(spec.name, "queue", None)]
    if spec.group is None:
        return [spec.name]
    validate_name(spec.group, "group")
    return [spec.name, retry_topic(spec.name, "topic", spec.group)]
