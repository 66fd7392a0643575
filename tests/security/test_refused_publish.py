"""DESIGN 13: when the broker refuses a subscription's dead letter (or retry) for lack of
permissions, the subscription pauses, the bus reports not ready and the log names the
destination and the user; once the permission is granted it goes on, and nothing is lost."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit, urlunsplit

import pytest
from refused_scenario import refused_until_granted

from eventbus import EventBus

pytestmark = pytest.mark.amqp

LIMITED = ("^(limited|eventbus)\\..*", "^(limited\\..*|eventbus\\..*|amq\\.default)$")


async def _permit(extra: str = "") -> None:
    """Set the test user ``limited``'s permissions (scripts/brokers), plus ``extra`` names."""
    configure, write = LIMITED
    if extra:
        configure, write = f"({configure}|^{extra}$)", f"({write}|^{extra}$)"
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl",
        "set_permissions",
        "-p",
        "/",
        "limited",
        configure,
        write,
        LIMITED[0],
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert await asyncio.wait_for(proc.wait(), 60) == 0


def _as_limited(amqp_url: str) -> str:
    parts = urlsplit(amqp_url)
    return urlunsplit(
        parts._replace(netloc=f"limited:limited-secret@{parts.hostname}:{parts.port}")
    )


async def test_a_refused_dead_letter_pauses_the_subscription_until_permitted(
    amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    try:
        dlq = await refused_until_granted(_as_limited(amqp_url), _permit, caplog)
        async with EventBus(amqp_url).publisher() as guest:
            assert await guest.transport.depth(dlq, "queue") == 2, "both dead letters kept"
    finally:
        await _permit()
