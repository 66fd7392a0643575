"""Topic creation and offset queries through Kafka's admin API.

Topics are created explicitly (never by broker auto-creation) with the configured partition
count and replication factor, idempotently: an existing topic is fine and is left as it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, cast

from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.errors import for_code  # type: ignore[import-untyped]
from aiokafka.protocol.metadata import MetadataRequest  # type: ignore[import-untyped]

from eventbus.errors import AuthorizationError, BrokerUnavailableError, ConfigurationError
from eventbus.loggers import get_logger
from eventbus_kafka.errors import is_transient
from eventbus_kafka.url import KafkaSettings

__all__ = ["UNKNOWN_TOPIC", "TopicAdmin"]

log = get_logger(__name__)

UNKNOWN_TOPIC = 3  # UNKNOWN_TOPIC_OR_PARTITION
_TOPIC_ALREADY_EXISTS = 36
_AUTHORIZATION_FAILED = (29, 31)  # topic / cluster authorization failed
# Room for the CloudEvents headers, the key and the batch framing on top of the largest body.
HEADROOM = 64 * 1024


class TopicAdmin:
    """One admin connection per transport; remembers which topics it already ensured."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._client: Any = None
        self._ensured: set[str] = set()
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        client = AIOKafkaAdminClient(**self._settings.client_options())
        await client.start()
        self._client = client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    @property
    def client(self) -> Any:
        if self._client is None:
            raise RuntimeError("the Kafka transport is not connected; call connect() first")
        return self._client

    def ensured(self, name: str) -> bool:
        """Whether ``name`` is known to exist (`ensure_topics` has nothing to do for it)."""
        return name in self._ensured

    async def ensure_topics(self, names: Iterable[str], partitions: int | None = None) -> None:
        """Create the topics that do not exist yet (with ``partitions``, else the URL's
        ``partitions``). Raises `ConfigurationError` naming the
        topic and the broker's reason when the broker refuses (bad name, replication factor
        above the broker count, policy, ACL), `BrokerUnavailableError` when it cannot be
        reached in time."""
        missing = [name for name in dict.fromkeys(names) if name not in self._ensured]
        if not missing:
            return
        async with self._lock:  # concurrent publishers to a new topic create it once
            missing = [name for name in missing if name not in self._ensured]
            if missing:
                await self._create(missing, partitions or self._settings.partitions)

    async def _create(self, names: list[str], partitions: int) -> None:
        settings = self._settings
        configs = {"max.message.bytes": str(settings.max_message_size + HEADROOM)}
        topics = [
            NewTopic(name, partitions, settings.replication_factor, topic_configs=configs)
            for name in names
        ]
        try:
            response = await asyncio.wait_for(
                self.client.create_topics(topics), settings.publish_timeout
            )
        except (TimeoutError, OSError) as exc:
            raise BrokerUnavailableError(
                settings.address, f"cannot create topics {names}: {exc!r}"
            ) from exc
        except Exception as exc:
            if is_transient(exc):
                raise BrokerUnavailableError(
                    settings.address, f"cannot create topics {names}: {exc!r}"
                ) from exc
            raise ConfigurationError(f"cannot create Kafka topics {names}: {exc!r}") from exc
        created: list[str] = []
        for entry in response.topic_errors:
            name, code = entry[0], entry[1]
            message = entry[2] if len(entry) > 2 else None
            if code in (0, _TOPIC_ALREADY_EXISTS):
                if code == 0:
                    created.append(name)
                self._ensured.add(name)
                continue
            if code in _AUTHORIZATION_FAILED and await self.topic_partitions(name) is not None:
                self._ensured.add(name)  # may not create topics, but this one exists: fine
                continue
            error = for_code(code)
            refused = AuthorizationError if code in _AUTHORIZATION_FAILED else ConfigurationError
            who = f" as {settings.user}" if code in _AUTHORIZATION_FAILED else ""
            raise refused(
                f"cannot create Kafka topic {name!r} ({partitions} partitions, "
                f"replication factor {settings.replication_factor}){who} at "
                f"{settings.address}: {error.__name__}: {message or error.description}"
            )

        if created:
            await self._wait_for_leaders(created)

    async def _wait_for_leaders(self, names: list[str]) -> None:
        """A new topic's partitions get their leaders a moment after creation; clients that
        use it before then only log errors and retry, so wait (bounded) for them here."""
        deadline = asyncio.get_running_loop().time() + 10.0
        waiting = set(names)
        while waiting and asyncio.get_running_loop().time() < deadline:
            for topic in await self.client.describe_topics(sorted(waiting)):
                partitions = topic["partitions"]
                if (
                    topic["error_code"] == 0
                    and partitions
                    and all(p["error_code"] == 0 and p["leader"] >= 0 for p in partitions)
                ):
                    waiting.discard(topic["topic"])
            if waiting:
                await asyncio.sleep(0.05)

    async def topic_partitions(self, name: str) -> list[int] | None:
        """Partition ids of an existing topic, None if it does not exist. Never creates it (see
        `topic_error`)."""
        topic = await self._metadata(name)
        if topic is None or topic["error_code"] != 0:
            return None
        return sorted(p["partition"] for p in topic["partitions"])

    async def topic_error(self, name: str) -> int | None:
        """The broker's error code for topic ``name``: 0 when it exists, `UNKNOWN_TOPIC` when
        it does not (as far as the broker asked knows), others (authorization, no leader) as
        they come; None when the answer does not name it. Never creates it."""
        topic = await self._metadata(name)
        return None if topic is None else int(topic["error_code"])

    async def _metadata(self, name: str) -> dict[str, Any] | None:
        """One topic's entry of a metadata answer, asked for without creating the topic:
        ``describe_topics`` asks with ``allow_auto_topic_creation`` on, so a broker with
        ``auto.create.topics.enable`` would create the topic a moment after answering that it
        is missing (and ``eventbus dlq list`` of a typo would leave one behind)."""
        request = MetadataRequest([name], allow_auto_topic_creation=False)
        response = await self.client._send_request(request)
        for topic in response.to_object()["topics"]:
            if topic["topic"] == name:
                return cast(dict[str, Any], topic)
        return None

    async def group_members(self, group: str) -> int | None:
        """Members of a consumer group now (0 when empty or unknown to the broker); None when
        the broker's answer cannot be read."""
        described = await self.client.describe_consumer_groups([group])
        for response in described:
            for entry in getattr(response, "groups", ()):
                # (error_code, group_id, state, protocol_type, protocol, members[, ...])
                if entry[1] == group:
                    return len(entry[5]) if entry[0] == 0 else 0
        return None

    async def group_offsets(self, group: str) -> dict[tuple[str, int], tuple[int, str]]:
        """Committed offsets of a consumer group: ``(topic, partition) -> (offset, metadata)``
        (offset -1: nothing committed)."""
        found = await self.client.list_consumer_group_offsets(group)
        return {
            (tp.topic, tp.partition): (meta.offset, meta.metadata or "")
            for tp, meta in found.items()
        }
