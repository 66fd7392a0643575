"""The ``timeout`` option: one attempt within a deadline, else `HandlerTimeoutError`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

from eventbus.dispatch.subscriber import Subscriber
from eventbus.errors import HandlerTimeoutError

__all__ = ["within"]


async def within(
    seconds: float, call: Callable[[], Awaitable[None]], sub: Subscriber, attempt: int
) -> None:
    """``call()`` within ``seconds``, else `HandlerTimeoutError`: a failed attempt.

    Its own cancel scope: the timeout's cancellation ends inside it and never reaches the
    runner's check for the bus's own cancellation, while the bus's (shutdown, a lost delivery)
    comes from outside and goes on past it, so neither is taken for the other."""
    cleanup: Exception | None = None
    with anyio.CancelScope(deadline=anyio.current_time() + seconds) as scope:
        try:
            await call()
        except Exception as exc:
            if not scope.cancel_called:
                raise
            cleanup = exc  # raised while unwinding from the timeout: still the timeout
    if scope.cancel_called:
        # Also when the handler swallowed the cancellation and returned: it ran too long.
        sub.stats.timed_out += 1
        raise HandlerTimeoutError(sub.handler.name, seconds, attempt) from cleanup
