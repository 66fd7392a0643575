"""Helpers shared by the RabbitMQ adapter tests (imported by module name: tests are no package)."""

import uuid

import anyio

from eventbus.transports.base import RawDelivery, Subscription

CREATED: set[str] = set()
"""Name suffixes used by this test session; conftest deletes their queues and exchanges."""


def unique_suffix() -> str:
    suffix = uuid.uuid4().hex[:10]
    CREATED.add(suffix)
    return suffix


def with_options(url: str, options: str) -> str:
    if not options:
        return url
    return f"{url}{'&' if '?' in url else '?'}{options}"


async def take(subscription: Subscription, count: int, within: float = 30.0) -> list[RawDelivery]:
    """The next ``count`` deliveries (unsettled); fails after ``within`` seconds."""
    got: list[RawDelivery] = []
    with anyio.fail_after(within):
        iterator = aiter(subscription)
        while len(got) < count:
            got.append(await anext(iterator))
    return got


async def next_or_none(subscription: Subscription, quiet: float) -> RawDelivery | None:
    """The next delivery, or None when nothing arrives for ``quiet`` seconds."""
    with anyio.move_on_after(quiet):
        return await anext(aiter(subscription))
    return None


async def nothing_more(subscription: Subscription, quiet: float = 1.0) -> bool:
    """True when nothing arrives for ``quiet`` seconds."""
    with anyio.move_on_after(quiet):
        await anext(aiter(subscription))
        return False
    return True
