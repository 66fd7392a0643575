"""Scheduled publish and expiry across ``scripts/brokers restart rabbitmq`` (issue 16): never
early, never lost, an expired message dead-lettered and never handled. The scenario is
``schedule_restart``; it restarts the shared broker once, so it is marked ``reliability``."""

from collections.abc import Callable

import pytest
from schedule_restart import scheduled_and_expiry_across_restart

pytestmark = [pytest.mark.amqp, pytest.mark.reliability, pytest.mark.timeout(480)]


async def test_scheduled_and_expiring_messages_across_a_broker_restart(
    amqp_url: str, name: Callable[[str], str]
) -> None:
    await scheduled_and_expiry_across_restart(amqp_url, "rabbitmq", name, later=15.0)
