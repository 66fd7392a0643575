"""`KafkaDelivery`: one consumed record handed to the core, settled through its subscription."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from eventbus.message import Message
from eventbus_kafka.offsets import PartitionOffsets
from eventbus_kafka.wire import from_record

__all__ = ["KafkaDelivery", "Taken"]


@dataclass(slots=True)
class Taken:
    """A record taken from the consumer and not finished: buffered, or yielded as a delivery.
    ``tracker`` is its partition's bookkeeping for the assignment it was fetched under."""

    tracker: PartitionOffsets
    partition: int
    record: Any  # aiokafka ConsumerRecord
    redelivered: bool = False

    @property
    def offset(self) -> int:
        return int(self.record.offset)

    @property
    def size(self) -> int:
        """Bytes of the value, for the read-ahead budget."""
        value = self.record.value
        return len(value) if value is not None else 0

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

    __slots__ = ("_settled", "_settler", "defect", "message", "native", "redelivered", "taken")

    def __init__(
        self, settler: _Settler, taken: Taken, message: Message, defect: str | None = None
    ) -> None:
        self._settler = settler
        self.defect = defect
        self.taken = taken
        self._settled = False
        self.message = message
        self.redelivered = taken.redelivered
        self.native: Mapping[str, str] = {
            "partition": str(taken.partition),
            "offset": str(taken.offset),
        }

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
