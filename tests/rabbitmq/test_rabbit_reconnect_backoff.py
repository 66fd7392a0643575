"""Reconnecting backs off even when every connection succeeds: a broker (or a load balancer)
that drops each connection right after the handshake must not be hammered with a new
connection every half second. The wait resets only once a connection stayed up for
``Backoff.stable_after`` seconds (backoff.py, connection.py)."""

from __future__ import annotations

import asyncio
import itertools
from urllib.parse import urlsplit

import anyio
import pytest
from cutting_proxy import CuttingProxy
from rabbit_helpers import through, unique_suffix

from eventbus import EventBus, Message

pytestmark = [pytest.mark.amqp, pytest.mark.timeout(120)]

CUT_AFTER = 0.5
WATCH = 14.0


async def test_connections_dropped_after_the_handshake_are_reopened_with_growing_waits(
    amqp_url: str,
) -> None:
    parts = urlsplit(amqp_url)
    proxy = CuttingProxy(parts.hostname or "127.0.0.1", parts.port or 5672, cut_after=CUT_AFTER)
    await proxy.start()
    topic = f"rmq-cutconn-{unique_suffix()}"
    bus = EventBus(through(amqp_url, proxy.port), graceful_timeout=1)

    @bus.subscribe(topic, group="g")
    async def handle(message: Message) -> None:
        pass

    try:
        async with bus:
            # The publishing connection opens first and is not needed again (nothing is
            # published): every later accept is the consuming connection coming back.
            assert len(proxy.accepted) == 2, proxy.accepted
            start = asyncio.get_running_loop().time()
            await anyio.sleep(WATCH)
            accepts = [t for t in proxy.accepted[1:] if t <= start + WATCH]
    finally:
        await proxy.close()

    gaps = [b - a for a, b in itertools.pairwise(accepts)]
    shown = ", ".join(f"{gap:.2f}" for gap in gaps)
    # Each connection lives CUT_AFTER s; without backoff a new one follows at once, which is
    # ~WATCH / CUT_AFTER (28) connections. With waits of 0.1, 0.2, 0.4, ... 5 s (jittered down
    # to half) there are about 8, and the last gaps are several times the first. The bounds
    # leave room for a slow machine either way.
    assert len(accepts) >= 4, f"the subscription kept reconnecting: gaps {shown}"
    assert len(accepts) <= 14, f"{len(accepts)} connections in {WATCH:g} s: gaps {shown}"
    assert sum(gaps[-2:]) / 2 >= 1.5 * gaps[0], f"the waits did not grow: gaps {shown}"
