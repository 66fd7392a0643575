"""Handler signatures: checked at decoration time, injected at call time."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin, get_type_hints

from eventbus.errors import HandlerSignatureError
from eventbus.message import Delivery, Message

__all__ = ["HandlerSpec", "inspect_handler"]

ParamKind = Literal["payload", "delivery", "message", "inbox"]


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """What a handler asks for: which parameters get the payload, the `Delivery`, the `Message`,
    or an inbox resource (see `eventbus.dedup.InboxStore`)."""

    func: Callable[..., Any]
    name: str
    params: tuple[tuple[str, ParamKind], ...]
    payload_type: Any
    """The payload parameter's annotation, or None when the handler takes no payload."""
    inbox_type: Any
    is_async: bool
    return_type: Any = None
    """The return annotation (``type(None)`` for ``-> None``), or None when there is none: what
    a handler with a declared destination publishes (for schema and AsyncAPI documents)."""
    batch: bool = False
    """A batch handler (``batch=``): every parameter is a list, ``payload_type`` its items'."""

    def kwargs(
        self, payload: object, delivery: Delivery, inbox: object = None
    ) -> dict[str, object]:
        # Runs once per message: a plain loop, no lookup table built per call.
        out: dict[str, object] = {}
        for name, kind in self.params:
            if kind == "payload":
                out[name] = payload
            elif kind == "delivery":
                out[name] = delivery
            elif kind == "message":
                out[name] = delivery.message
            else:
                out[name] = inbox
        return out

    @property
    def takes_deliveries(self) -> bool:
        return any(kind == "delivery" for _, kind in self.params)

    def batch_kwargs(
        self,
        payloads: list[object],
        messages: list[Message],
        deliveries: list[Delivery] | None,
        inbox: object = None,
    ) -> dict[str, object]:
        """A batch handler's arguments; ``deliveries`` may be None unless it takes them."""
        out: dict[str, object] = {}
        for name, kind in self.params:
            if kind == "payload":
                out[name] = payloads
            elif kind == "delivery":
                out[name] = deliveries
            elif kind == "message":
                out[name] = messages
            else:
                out[name] = inbox
        return out


def inspect_handler(
    func: Callable[..., Any], inbox_types: tuple[type[Any], ...] = (), *, batch: bool = False
) -> HandlerSpec:
    """Read ``func``'s annotations; raise `HandlerSignatureError` naming it if they cannot be
    served. The first parameter that is not a `Delivery` or `Message` (or an inbox resource) is
    the payload; its annotation is what the body is validated into.

    ``batch``: a batch handler, whose parameters are lists of the same (``list[Order]``,
    ``list[Delivery]``, ``list[Message]``), but for the inbox resource: one for the batch."""
    name = getattr(func, "__qualname__", repr(func))
    if not callable(func):
        raise HandlerSignatureError(f"handler {name} is not callable")
    try:
        signature = inspect.signature(func)
        hints = get_type_hints(func)
    except (NameError, TypeError) as exc:
        raise HandlerSignatureError(
            f"handler {name}: cannot resolve its annotations: {exc}"
        ) from exc

    params: list[tuple[str, ParamKind]] = []
    payload_type: Any = None
    inbox_type: Any = None
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise HandlerSignatureError(
                f"handler {name}: *args/**kwargs cannot be injected; annotate each parameter"
            )
        if param.kind is param.POSITIONAL_ONLY:
            # Values are passed by name (`HandlerSpec.kwargs`): refuse now rather than fail
            # with a TypeError on every message (DESIGN 3.10: at decoration time).
            raise HandlerSignatureError(
                f"handler {name}: parameter {param.name!r} is positional-only; parameters are "
                "injected by name"
            )
        if param.name not in hints:
            if param.default is not param.empty:
                continue
            raise HandlerSignatureError(
                f"handler {name}: parameter {param.name!r} has no annotation; annotate it with "
                "the payload type (a pydantic model, bytes, str, dict), Delivery or Message"
            )
        annotation = hints[param.name]
        inbox = isinstance(annotation, type) and bool(inbox_types)
        inbox = inbox and issubclass(annotation, inbox_types)
        if batch and not inbox:  # the inbox resource is one, for the whole batch
            annotation = _item_type(name, param.name, annotation)
        kind: ParamKind
        if annotation is Delivery:
            kind = "delivery"
        elif annotation is Message:
            # Always the raw message, wherever it stands: `(message: Message, order: Order)`
            # must make ``order`` the payload. A handler with no other payload parameter gets
            # payload_type None, which decodes to the Message itself.
            kind = "message"
        elif inbox:
            kind, inbox_type = "inbox", annotation
        elif payload_type is None:
            kind, payload_type = "payload", annotation
        else:
            raise HandlerSignatureError(
                f"handler {name}: parameter {param.name!r} ({annotation!r}) would be a second "
                f"payload; the payload is already {payload_type!r}. Only one payload parameter, "
                "plus Delivery / Message, can be injected"
            )
        params.append((param.name, kind))
    return HandlerSpec(
        func=func,
        name=name,
        params=tuple(params),
        payload_type=payload_type,
        inbox_type=inbox_type,
        is_async=inspect.iscoroutinefunction(func),
        return_type=hints.get("return"),
        batch=batch,
    )


def _item_type(handler: str, param: str, annotation: Any) -> Any:
    if get_origin(annotation) is list and len(get_args(annotation)) == 1:
        return get_args(annotation)[0]
    raise HandlerSignatureError(
        f"handler {handler}: with batch= every parameter is a list; {param!r} is annotated "
        f"{annotation!r} (write list[...] of the payload type, Delivery or Message)"
    )
