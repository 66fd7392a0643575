"""What every outbox shares: the row it writes, how a row becomes a message, the relay's SPI.

Per-key order rests on one rule: **a key always falls in the same bucket** (`bucket_of`), and
the relay publishes one bucket's rows one at a time, in ``id`` order, and marks them sent
before anyone else may take that bucket (PostgreSQL: a session advisory lock per bucket;
SQLite: one lease over the whole table). Rows without a key are spread over the buckets by
message id: no order is promised for them, so they only share the work.
"""

from __future__ import annotations

import json
import math
import zlib
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

from eventbus.codecs.base import AsyncCodec, Codec
from eventbus.codecs.json import JsonCodec
from eventbus.dispatch.current import HANDLING
from eventbus.errors import ConfigurationError, EventBusError
from eventbus.headers import CAUSATION_ID, DATASCHEMA
from eventbus.message import Message, new_message_id
from eventbus.outgoing import check_name, checked_headers, encode_with
from eventbus.transports.base import Kind

__all__ = [
    "BUCKETS",
    "DEFAULT_RETENTION",
    "NotInTransactionError",
    "Outbox",
    "OutboxBacklog",
    "OutboxRow",
    "PublishFailed",
    "PublishRows",
    "Relayed",
    "bucket_of",
    "check_retention",
]

BUCKETS = 32
"""Fixed for every table: a key's bucket is written with its row, so writers and relays must
agree forever. 32 lets up to 32 relays work at once on one table."""
DEFAULT_RETENTION = 7 * 24 * 3600.0
"""Seconds sent rows are kept (for audits and replays by hand) before they are deleted."""
# One list of columns for every outbox table, so the databases cannot drift apart.
READ_COLUMNS = (
    "id, kind, destination, key, message_id, body, headers, content_type, type, "
    "correlation_id, created_at"
)
"""What the relay selects of a row, in the order `read_row` takes them."""
INSERT_COLUMNS = (
    "kind, destination, key, bucket, message_id, body, headers, content_type, type, "
    "correlation_id, created_at"
)
"""What `publish`/`send` insert, in the order of `NewRow.values`."""

ConnT = TypeVar("ConnT")


class NotInTransactionError(EventBusError, RuntimeError):
    """`publish`/`send` on a connection with no open transaction: the row would commit on its
    own, whatever happens to the application's writes, which is what an outbox exists to
    prevent."""


def bucket_of(key: str | None, spread: int = 0) -> int:
    """The bucket of a row: the key's CRC-32 (stable across processes and Python versions,
    unlike ``hash``), or ``spread`` (any number, say a CRC-32 of the message id) for rows
    without a key, which only share the work."""
    if key is None:
        return spread % BUCKETS
    return zlib.crc32(key.encode()) % BUCKETS


def check_retention(retention: float) -> float:
    if isinstance(retention, bool) or not isinstance(retention, int | float):
        raise ConfigurationError(f"retention must be a number of seconds, got {retention!r}")
    if not math.isfinite(retention) or retention < 0:
        raise ConfigurationError(
            f"retention must be a finite number of seconds >= 0 (0 deletes sent rows at once), "
            f"got {retention!r}"
        )
    return float(retention)


@dataclass(frozen=True, slots=True)
class OutboxBacklog:
    """Rows committed and not yet published (confirmed by the broker and marked sent)."""

    unsent: int
    oldest_age: float
    """Seconds since the oldest unsent row was written; 0 when there is none."""
    failed: int = 0
    """Rows set aside as never publishable (their ``failed`` column says why)."""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One committed row as the relay reads it: where it goes and the message itself."""

    id: int
    kind: Kind
    message: Message
    defect: str | None = None
    """Why the stored row cannot be made into a message (then ``message`` is a stand-in)."""


@dataclass(slots=True)
class Relayed:
    """What publishing a batch of rows came to."""

    sent: list[int]
    """Ids of the rows the broker confirmed: marked sent."""
    failed: dict[int, str]
    """Rows that can never be published (too large, unroutable, unreadable), by id, with
    why: set aside in the table, so they hold back nothing (a dead letter's rule)."""
    error: BaseException | None = None
    """What stopped the batch (the broker gone, say): the rows neither sent nor failed wait
    for the next round."""


class PublishFailed(Exception):
    """A batch's publish failed for a reason that may pass (the cause is ``__cause__``): its
    rows stay unsent and the relay tries again with backoff."""


def stored_row(row_id: int, kind: Kind, **fields: object) -> OutboxRow:
    """The `OutboxRow` of a stored row (`row_message`'s fields); one whose fields cannot make a
    message (headers that are not a JSON object of text, say) comes back with a ``defect``."""
    try:
        return OutboxRow(row_id, kind, row_message(**fields))  # type: ignore[arg-type]
    except Exception as exc:
        stand_in = Message(id=str(fields.get("message_id") or row_id), topic="", body=b"")
        return OutboxRow(row_id, kind, stand_in, defect=f"unreadable row: {exc!r}")


def read_row(r: Sequence[Any], created_at: datetime) -> OutboxRow:
    """`stored_row` of a row selected as `READ_COLUMNS`; ``created_at`` is given apart, as a
    datetime, because each database stores it its own way."""
    return stored_row(
        r[0],
        r[1],
        destination=r[2],
        key=r[3],
        message_id=r[4],
        body=r[5],
        headers=r[6],
        content_type=r[7],
        type=r[8],
        correlation_id=r[9],
        created_at=created_at,
    )


async def settle_batch(
    rows: Sequence[OutboxRow],
    publish: PublishRows,
    mark_sent: Callable[[list[int]], Awaitable[None]],
    mark_failed: Callable[[dict[int, str]], Awaitable[None]],
    marked: Callable[[int], None],
) -> None:
    """Publish ``rows`` and record the outcome: the confirmed ones sent, the unpublishable ones
    failed; then `PublishFailed` if something stopped the batch. Marked only after the broker
    confirmed: a crash in between publishes them again (same message ids)."""
    outcome = await publish(rows)
    if outcome.sent:
        await mark_sent(outcome.sent)
        marked(len(outcome.sent))
    if outcome.failed:
        await mark_failed(outcome.failed)
    if outcome.error is not None:
        raise PublishFailed(str(outcome.error)) from outcome.error


@dataclass(frozen=True, slots=True)
class NewRow:
    """What `publish`/`send` insert; the id and bucket are the database's and `bucket_of`'s."""

    kind: Kind
    destination: str
    key: str | None
    message_id: str
    body: bytes
    headers: str
    """JSON object of text values."""
    content_type: str | None
    type: str | None
    correlation_id: str | None
    created_at: datetime

    @property
    def bucket(self) -> int:
        return bucket_of(self.key, zlib.crc32(self.message_id.encode()))

    def values(self, created_at: object) -> tuple[object, ...]:
        """The row in `INSERT_COLUMNS` order, with ``created_at`` as the database stores it."""
        return (
            self.kind,
            self.destination,
            self.key,
            self.bucket,
            self.message_id,
            self.body,
            self.headers,
            self.content_type,
            self.type,
            self.correlation_id,
            created_at,
        )


def row_message(
    *,
    destination: str,
    key: str | None,
    message_id: str,
    body: bytes,
    headers: str | Mapping[str, str],
    content_type: str | None,
    type: str | None,
    correlation_id: str | None,
    created_at: datetime,
) -> Message:
    """The message a stored row stands for: the id and timestamp given at insert time, so a
    row published twice (a relay crash between publish and mark) is the same message twice and
    consumer-side dedup drops the second."""
    parsed = json.loads(headers) if isinstance(headers, str) else headers
    if not isinstance(parsed, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()
    ):
        raise ValueError(f"headers are not a JSON object of text: {str(headers)[:200]!r}")
    return Message(
        id=message_id,
        topic=destination,
        body=bytes(body),
        key=key,
        headers=dict(parsed),
        content_type=content_type,
        type=type,
        timestamp=created_at if created_at.tzinfo else created_at.replace(tzinfo=UTC),
        correlation_id=correlation_id,
    )


PublishRows = Callable[[Sequence[OutboxRow]], Awaitable[Relayed]]
"""Publishes rows in the order given, waiting for the broker's confirmations, and says which
were confirmed and which can never be (`Relayed`)."""


class Writer:
    """Encodes what `publish`/`send` are given into a `NewRow`, the way `EventBus.publish`
    would: the bus's codec once attached (JSON until then, or ``codec=`` when given), the
    application's headers checked, the message id assigned now."""

    def __init__(self, codec: Codec | AsyncCodec | None) -> None:
        self.codec: Codec | AsyncCodec = codec or JsonCodec()
        self._codec_given = codec is not None

    def attach(self, codec: Codec | AsyncCodec) -> None:
        """Called by `EventBus(outbox=...)`: use the bus's codec unless one was given."""
        if not self._codec_given:
            self.codec = codec

    async def new_row(
        self,
        kind: Kind,
        name: str,
        payload: object,
        *,
        key: str | None,
        headers: Mapping[str, str] | None,
        message_id: str | None,
        correlation_id: str | None,
    ) -> NewRow:
        check_name(kind, name)
        if key is not None and not isinstance(key, str):
            raise ConfigurationError(f"key must be a str or None, got {key!r}")
        encoded = await encode_with(self.codec, payload, name)
        own = checked_headers(headers)
        handling = HANDLING.get()
        if handling is not None:  # written by a handler: keep the causal chain (DESIGN 9)
            cause = handling[1].raw.message
            correlation_id = correlation_id or cause.correlation_id or cause.id
            own[CAUSATION_ID] = cause.id
        if encoded.dataschema is not None:
            own[DATASCHEMA] = encoded.dataschema
        return NewRow(
            kind=kind,
            destination=name,
            key=key,
            message_id=message_id or new_message_id(),
            body=encoded.body,
            headers=json.dumps(own, separators=(",", ":")),
            content_type=encoded.content_type,
            type=encoded.type,
            correlation_id=correlation_id,
            created_at=datetime.now(UTC),
        )


class OutboxTable(ABC, Generic[ConnT]):
    """What the outbox tables share: `publish`/`send` on the application's connection (a
    ``ConnT``), inside its transaction, and the codec they encode with. Each database checks
    the connection (`_check_connection`) and inserts the row (`_insert`) its own way."""

    _writer: Writer

    @property
    def codec(self) -> Codec | AsyncCodec:
        return self._writer.codec

    def attach(self, codec: Codec | AsyncCodec) -> None:
        self._writer.attach(codec)

    async def publish(
        self,
        conn: ConnT,
        topic: str,
        payload: object,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
    ) -> str:
        """Write an event for ``topic`` in ``conn``'s transaction; the relay publishes it once
        the transaction committed (nothing, if it rolls back). Returns the message id, which
        the message keeps however often it is published."""
        return await self._write(
            conn, "topic", topic, payload, key, headers, message_id, correlation_id
        )

    async def send(
        self,
        conn: ConnT,
        queue: str,
        payload: object,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
    ) -> str:
        """`publish` for a command to ``queue``."""
        return await self._write(
            conn, "queue", queue, payload, key, headers, message_id, correlation_id
        )

    async def _write(
        self,
        conn: Any,
        kind: Kind,
        name: str,
        payload: object,
        key: str | None,
        headers: Mapping[str, str] | None,
        message_id: str | None,
        correlation_id: str | None,
    ) -> str:
        # The connection first: nothing is encoded for a message that could not be written.
        self._check_connection(conn, kind, name)
        row = await self._writer.new_row(
            kind,
            name,
            payload,
            key=key,
            headers=headers,
            message_id=message_id,
            correlation_id=correlation_id,
        )
        await self._insert(conn, row)
        return row.message_id

    @abstractmethod
    def _check_connection(self, conn: Any, kind: Kind, name: str) -> None:
        """`ConfigurationError` unless ``conn`` is this database's connection;
        `NotInTransactionError` if a row written on it now would commit on its own."""

    @abstractmethod
    async def _insert(self, conn: Any, row: NewRow) -> None:
        """Insert ``row`` on ``conn``, in its transaction (creating the table if need be)."""


class Outbox(Protocol):
    """What the relay (`EventBus(outbox=...)`, ``eventbus outbox relay``) needs of an outbox.

    Implemented by `PostgresOutbox` and `SqliteOutbox`; the relay is generic over it.
    """

    table: str
    retention: float

    def address(self) -> str:
        """Where the rows live, for logs: never a password."""
        ...

    def attach(self, codec: Codec | AsyncCodec) -> None: ...

    async def relay_round(
        self,
        publish: PublishRows,
        *,
        batch_size: int,
        stopping: Callable[[], bool],
        marked: Callable[[int], None],
    ) -> int:
        """Publish what this relay may take now, in batches of at most ``batch_size`` rows
        (`settle_batch`); returns how many rows it settled (``marked`` hears of each batch's
        sent rows as they are marked). Stops between batches once ``stopping()`` is true."""
        ...

    async def backlog(self) -> OutboxBacklog: ...

    async def purge_sent(self, *, limit: int) -> int:
        """Delete up to ``limit`` rows sent more than ``retention`` seconds ago."""
        ...

    async def close(self) -> None: ...
