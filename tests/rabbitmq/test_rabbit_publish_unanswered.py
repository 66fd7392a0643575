"""A publish the broker never answers fails within ``publish_timeout``, whichever step it waits
in: declaring its destination as well as the publisher confirm. A declaration left waiting
forever would hang whoever publishes (a handler's retry, the scheduled-message forwarder)
without a word."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import anyio
import pytest
from cutting_proxy import CuttingProxy
from rabbit_helpers import unique_suffix

from eventbus import BrokerUnavailableError, EventBus

pytestmark = [pytest.mark.amqp, pytest.mark.timeout(60)]


def through(url: str, port: int, query: str) -> str:
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    joined = f"{parts.query}&{query}" if parts.query else query
    return urlunsplit(parts._replace(netloc=f"{credentials}@127.0.0.1:{port}", query=joined))


async def test_a_declaration_the_broker_never_answers_fails_the_publish(amqp_url: str) -> None:
    parts = urlsplit(amqp_url)
    proxy = CuttingProxy(parts.hostname or "127.0.0.1", parts.port or 5672, cut_after=600)
    await proxy.start()
    suffix = unique_suffix()
    bus = EventBus(through(amqp_url, proxy.port, "publish_timeout=1.5"), graceful_timeout=1)
    try:
        async with bus.publisher():
            await bus.send(f"rmq-unanswered-a-{suffix}", "declared and confirmed")
            proxy.freeze()
            # A queue not declared yet: the publish first waits for queue.declare-ok.
            with anyio.fail_after(20), pytest.raises(BrokerUnavailableError) as raised:
                await bus.send(f"rmq-unanswered-b-{suffix}", "never answered")
            assert "no answer declaring" in str(raised.value)
            assert f"rmq-unanswered-b-{suffix}" in str(raised.value)
            await proxy.close()  # the bus's own stop must not wait for the frozen broker
    finally:
        await proxy.close()
