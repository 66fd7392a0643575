"""What this task is handling: the subscriber and the delivery's state, set by the runner for
the whole time it works on one message (decoding, attempts, settling).

Publishing reads it to carry correlation (DESIGN 9: a message published while a handler runs
gets the handled message's correlation id, and its id as ``eventbus-causation-id``), and the
JSON log format reads it to tag every line with the message it is about. Context variables
follow the task, and the worker thread of a synchronous handler (anyio copies the context).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from eventbus.dispatch.settle import DeliveryState
    from eventbus.dispatch.subscriber import Subscriber

__all__ = ["HANDLING"]

HANDLING: ContextVar[tuple[Subscriber, DeliveryState] | None] = ContextVar(
    "eventbus_handling", default=None
)
