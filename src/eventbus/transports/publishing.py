"""What every transport's ``publish`` does alike: the size check before sending, and the
`PublishError` built from per-message failures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from eventbus.errors import MessageTooLargeError, PublishError, UnroutableError
from eventbus.message import Message

__all__ = ["publish_error", "too_large"]


def too_large(message: Message, limit: int | None, broker: str) -> MessageTooLargeError | None:
    """The error for a body over ``limit`` bytes, or None when it fits (or nothing is known)."""
    if limit is None or len(message.body) <= limit:
        return None
    return MessageTooLargeError(
        f"message {message.id} is {len(message.body)} bytes; {broker} accepts at most {limit} "
        "(max_message_size in the URL)"
    )


def publish_error(
    failures: Mapping[int, BaseException], messages: Sequence[Message], where: str
) -> PublishError:
    """One error for the failed ones of ``messages`` (the others were confirmed). Its class
    says what all failures share: `MessageTooLargeError` or `UnroutableError` when every one
    is of that kind, else `PublishError`; ``failures`` maps each failed index to its cause."""
    first_index = min(failures)
    first = failures[first_index]
    text = (
        f"{len(failures)} of {len(messages)} messages to {where} were not confirmed "
        f"(first, #{first_index}: {first})"
    )
    if len(messages) == 1:
        text = f"publish to {where} failed: {first}"
    kind: type[PublishError] = PublishError
    for special in (MessageTooLargeError, UnroutableError):
        if all(isinstance(exc, special) for exc in failures.values()):
            kind = special
    error = kind(text, failures)
    error.__cause__ = first
    return error
