"""Request-reply on a real RabbitMQ: the conformance cases, and a hand-written AMQP responder."""

import json
import uuid

import aio_pika
import aio_pika.abc
import anyio
import pytest

from eventbus import EventBus
from eventbus.testing.request_conformance import RequestReplySuite

pytestmark = pytest.mark.amqp


class TestRabbitRequestReply(RequestReplySuite):
    @pytest.fixture
    def bus_url(self, amqp_url: str) -> str:
        return amqp_url


async def test_a_raw_amqp_client_answers_a_request_by_hand(amqp_url: str) -> None:
    """The wire is AMQP's own: a plain aio-pika consumer reads ``reply_to`` and
    ``correlation_id`` and answers on the default exchange."""
    queue = f"rr-raw-{uuid.uuid4().hex[:10]}"
    connection = await aio_pika.connect(amqp_url)
    seen: list[tuple[str | None, str | None]] = []
    async with connection, EventBus(amqp_url).publisher() as bus:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, durable=True)

        async def answer(request: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with request.process():
                seen.append((request.reply_to, request.correlation_id))
                total = json.loads(request.body)["qty"] * 2
                assert request.reply_to is not None
                await channel.default_exchange.publish(
                    aio_pika.Message(
                        json.dumps({"total": total}).encode(),
                        correlation_id=request.correlation_id,
                        content_type="application/json",
                    ),
                    routing_key=request.reply_to,
                )

        await declared.consume(answer)
        reply = await bus.request(queue, {"qty": 21}, response=dict, timeout=20)
        await channel.queue_delete(queue)
    assert reply == {"total": 42}
    [(reply_to, correlation_id)] = seen
    assert reply_to is not None and reply_to.startswith("eventbus.reply.")
    assert correlation_id is not None


async def test_an_eventbus_responder_answers_a_raw_amqp_requester(amqp_url: str) -> None:
    """A plain AMQP requester with a server-named exclusive queue (``amq.gen-...``) gets the
    handler's return value there, with its correlation id."""
    queue = f"rr-raw-{uuid.uuid4().hex[:10]}"
    bus = EventBus(amqp_url)

    @bus.consume(queue)
    async def double(n: int) -> int:
        return n * 2

    connection = await aio_pika.connect(amqp_url)
    async with connection, bus:
        channel = await connection.channel()
        inbox = await channel.declare_queue("", exclusive=True)
        assert inbox.name.startswith("amq.gen-")
        await channel.default_exchange.publish(
            aio_pika.Message(b"21", reply_to=inbox.name, correlation_id="c-42"),
            routing_key=queue,
        )
        with anyio.fail_after(20):
            async with inbox.iterator() as replies:
                async for reply in replies:
                    await reply.ack()
                    break
    assert reply.body == b"42" and reply.correlation_id == "c-42"
