"""`KafkaDelivery`: one consumed record handed to the core, settled through its subscription."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from eventbus.message import Message
from eventbus_kafka.offsets import PartitionOffsets
from eventbus_kafka.wire import from_record

__all__ = ["KafkaDelivery", "Taken"]


class Taken:
    """A record taken from the consumer and not finished: buffered, or yielded as a delivery.
    ``tracker`` is its partition's bookkeeping for the assignment it was fetched under.

    ``message`` is the record decoded by the fetch loop (`wire.decode`, which reads the
    routing headers in the same pass), or None: `to_message` decodes it when it is handed out
    (the fetch loop's decoding failed, or the record's time is when it is handed out).
    A plain class with slots: one is built per consumed record."""

    __slots__ = ("message", "offset", "partition", "record", "redelivered", "size", "tracker")

    def __init__(
        self,
        tracker: PartitionOffsets,
        partition: int,
        record: Any,  # aiokafka ConsumerRecord
        message: Message | None = None,
    ) -> None:
        self.tracker = tracker
        self.partition = partition
        self.record = record
        self.message = message
        self.offset: int = int(record.offset)
        value = record.value
        self.size: int = len(value) if value is not None else 0
        """Bytes of the value, for the read-ahead budget."""
        self.redelivered = False

    def to_message(self, topic: str) -> Message:
        record = self.record
        return from_record(
            topic=topic,
            record_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            headers=record.headers or (),
            timestamp_ms=record.timestamp,
        )


class _Settler(Protocol):
    def settled(self, delivery: KafkaDelivery, *, done: bool) -> None: ...


class KafkaDelivery:
    """`RawDelivery` for Kafka. ``ack`` marks the offset finished (committed later, never past
    an unfinished one); ``release`` leaves it unfinished so it comes back. Both are idempotent
    and no-ops once the delivery was reported lost (`detach`), its partition revoked or the
    subscription closed."""

    __slots__ = (
        "_native",
        "_settled",
        "_settler",
        "defect",
        "message",
        "redelivered",
        "taken",
    )

    def __init__(
        self, settler: _Settler, taken: Taken, message: Message, defect: str | None = None
    ) -> None:
        self._settler = settler
        self.defect = defect
        self.taken = taken
        self._settled = False
        self.message = message
        self.redelivered = taken.redelivered
        self._native: Mapping[str, str] | None = None

    @property
    def native(self) -> Mapping[str, str]:
        """Built when asked for (dead letters, tracing), not for every record."""
        native = self._native
        if native is None:
            taken = self.taken
            native = self._native = {
                "partition": str(taken.partition),
                "offset": str(taken.offset),
            }
        return native

    @native.setter
    def native(self, value: Mapping[str, str]) -> None:
        self._native = value

    def detach(self) -> None:
        """No longer this process's (reported lost): later settles do nothing."""
        self._settled = True

    async def ack(self) -> None:
        if not self._settled:
            self._settled = True
            self._settler.settled(self, done=True)

    async def release(self) -> None:
        if not self._settled:
            self._settled = True
            self._settler.settled(self, done=False)

    def __repr__(self) -> str:
        return (
            f"<KafkaDelivery {self.taken.record.topic}/{self.taken.partition}/"
            f"{self.taken.offset} id={self.message.id}>"
        )
