"""Argument checks shared by the dedup stores: one wording for every store's errors."""

from __future__ import annotations

import math
import re

from eventbus.errors import ConfigurationError

__all__ = ["check_identifier", "check_positive_int", "check_seconds"]

# Schema-qualified SQL names (``dedup`` or ``infra.dedup``): interpolated into statements, so
# only plain identifiers are accepted, never quoting tricks.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?")


def check_seconds(name: str, value: float) -> float:
    """``value`` as a float if it is a finite number of seconds above zero.

    Errors are `ConfigurationError`, a ``ValueError``.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(
            f"{name} must be a finite number of seconds above 0, got {value!r}"
        )
    return float(value)


def check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be an integer of at least 1, got {value!r}")
    return value


def check_identifier(name: str, value: str) -> str:
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise ConfigurationError(
            f"{name} must be a plain SQL identifier such as 'eventbus_dedup' or "
            f"'infra.eventbus_dedup' (letters, digits, underscores), got {value!r}"
        )
    return value
