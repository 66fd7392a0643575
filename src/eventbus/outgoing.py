"""What every way of publishing checks and encodes the same way: `EventBus.publish`/`send` and
the transactional outbox (`eventbus.outbox`), so their rules cannot drift apart."""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from typing import cast

from eventbus.codecs.base import AsyncCodec, Codec, Encoded
from eventbus.errors import ConfigurationError

__all__ = ["check_name", "checked_headers", "encode_with"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def checked_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """A copy of the application's headers, refused if not text or in eventbus's namespace."""
    if not headers:
        return {}
    for k, v in headers.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ConfigurationError(f"headers must map str to str; got {k!r}: {v!r}")
        if k.startswith("eventbus-"):
            raise ConfigurationError(f"header {k!r}: the eventbus- prefix is reserved")
    return dict(headers)


async def encode_with(codec: Codec | AsyncCodec, payload: object, destination: str) -> Encoded:
    """``payload`` through a codec of either kind."""
    if inspect.iscoroutinefunction(codec.encode):
        return await cast(AsyncCodec, codec).encode(payload, destination)
    return cast(Codec, codec).encode(payload)


def check_name(what: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigurationError(
            f"invalid {what} name {name!r}: use 1-200 characters of letters, digits, '.', '_' "
            "and '-', starting with a letter or digit"
        )
    return name
