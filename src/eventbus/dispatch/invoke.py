"""Calling the handler: the middleware chain, built once per subscription.

The innermost `Handler` injects the handler's parameters from the `Delivery` (its decoded
``payload`` included), runs a synchronous handler in a worker thread (a blocking handler would
stall every other handler of the process), opens the inbox transaction for handlers that take
one, and publishes what the handler returns (`eventbus.dispatch.returns`). Middleware wraps it;
the first middleware given is the outermost.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Sequence

import anyio

from eventbus.dedup.base import DedupStore, InboxStore
from eventbus.dispatch.handler import HandlerSpec
from eventbus.dispatch.returns import PublishResult, destination_for
from eventbus.dispatch.settle import DeliveryState
from eventbus.dispatch.subscriber import Subscriber
from eventbus.message import Delivery
from eventbus.transports.base import Destination

__all__ = ["Handler", "Middleware", "build_handler", "call_handler"]

Handler = Callable[[Delivery], Awaitable[None]]
"""What middleware wraps: a call that handles one delivery (payload already decoded)."""
Middleware = Callable[[Handler], Handler]
"""``Callable[[Handler], Handler]``; the first middleware given is the outermost."""


def build_handler(
    subscriber: Subscriber, middleware: Sequence[Middleware], publish: PublishResult
) -> Handler:
    spec = subscriber.handler
    store = subscriber.options.dedup
    declared = subscriber.options.returns
    if spec.inbox_type is not None and isinstance(store, InboxStore):
        handler = _inbox_call(spec, store, subscriber, declared, publish)
    elif spec.is_async:
        func = spec.func
        kwargs = spec.kwargs

        async def handler(d: Delivery) -> None:
            result = await func(**kwargs(d.payload, d))
            if result is not None or d.message.reply_to is not None:  # None is a reply too
                await _publish(publish, d, declared, result)

    else:
        handler = _threaded_call(spec, declared, publish)
    for wrap in reversed(middleware):
        handler = wrap(handler)
    return handler


async def _publish(
    publish: PublishResult, d: Delivery, declared: Destination | None, result: object
) -> None:
    to = destination_for(d.message, declared)
    if to is not None:
        await publish(to, result, d.message)


def _threaded_call(
    spec: HandlerSpec, declared: Destination | None, publish: PublishResult
) -> Handler:
    async def call(d: Delivery) -> None:
        result = await call_handler(spec, spec.kwargs(d.payload, d))
        if result is not None or d.message.reply_to is not None:  # None is a reply too
            await _publish(publish, d, declared, result)

    return call


async def call_handler(spec: HandlerSpec, kwargs: dict[str, object]) -> object:
    """The user's function itself: awaited, or run in a worker thread when synchronous."""
    if spec.is_async:
        return await spec.func(**kwargs)
    result = await anyio.to_thread.run_sync(functools.partial(spec.func, **kwargs))
    if inspect.isawaitable(result):
        # A plain `def` returning a coroutine (a decorator's sync wrapper around an async
        # handler): unless awaited, its body never runs and the message would be acked
        # unhandled (DESIGN 3.1).
        result = await result
    return result


def _inbox_call(
    spec: HandlerSpec,
    store: DedupStore,
    subscriber: Subscriber,
    declared: Destination | None,
    publish: PublishResult,
) -> Handler:
    assert isinstance(store, InboxStore)
    inbox = store.inbox
    scope, ttl = subscriber.scope, subscriber.options.dedup_ttl

    async def call(d: Delivery) -> None:
        state = d._settler  # the runtime's own object: the inbox needs its claim
        assert isinstance(state, DeliveryState) and state.claim_owner is not None
        assert state.dedup_key is not None
        state.inbox_open = True
        try:
            async with inbox(scope, state.dedup_key, owner=state.claim_owner, ttl=ttl) as res:
                result = await call_handler(spec, spec.kwargs(d.payload, d, res))
                if result is not None or d.message.reply_to is not None:  # None is a reply too
                    # Before the commit: once committed, a redelivery is skipped as done, so
                    # an output that failed after it would be lost; this way it may repeat.
                    await _publish(publish, d, declared, result)
        finally:
            state.inbox_open = False
        state.inbox_done = True

    return call
