"""Transport URL options: the parsers and the query walk every adapter shares.

An adapter keeps only its table (option name -> parser) and its defaults; parsing, validation,
"unknown option" and "given twice" errors, and keeping secrets out of messages live here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from eventbus.errors import ConfigurationError

__all__ = [
    "OptionParser",
    "censor_url",
    "choice",
    "or_none",
    "parse_options",
    "positive_int",
    "seconds",
    "text",
]

OptionParser = Callable[[str, str, str], Any]
"""``parse(label, name, raw)``: the value, or `ConfigurationError` naming the option."""


def positive_int(label: str, name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigurationError(f"{label} URL option {name}={raw!r}: expected an integer >= 1")
    return value


def seconds(label: str, name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(
            f"{label} URL option {name}={raw!r}: expected seconds (a positive number)"
        )
    return value


def text(label: str, name: str, raw: str) -> str:
    if not raw:
        raise ConfigurationError(f"{label} URL option {name} is empty")
    return raw


def choice(*choices: str, upper: bool = False) -> OptionParser:
    def parse(label: str, name: str, raw: str) -> str:
        value = raw.upper() if upper else raw.lower()
        if value not in choices:
            raise ConfigurationError(
                f"{label} URL option {name}={raw!r}: expected one of {', '.join(choices)}"
            )
        return value

    return parse


def or_none(parser: OptionParser) -> OptionParser:
    """``parser``, or None for the word ``none`` (an option that can be switched off)."""

    def parse(label: str, name: str, raw: str) -> Any:
        return None if raw.lower() == "none" else parser(label, name, raw)

    return parse


def parse_options(
    label: str,
    query: str,
    table: Mapping[str, OptionParser],
    passthrough: Collection[str] = (),
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Walk a URL query: options in ``table`` are parsed (each at most once), names in
    ``passthrough`` are returned untouched for the driver, anything else is an error listing
    the known options."""
    values: dict[str, Any] = {}
    passed: list[tuple[str, str]] = []
    for name, raw in parse_qsl(query, keep_blank_values=True):
        if name in table:
            if name in values:
                raise ConfigurationError(f"{label} URL option {name!r} is given twice")
            values[name] = table[name](label, name, raw)
        elif name in passthrough:
            passed.append((name, raw))
        else:
            known = ", ".join(sorted({*table, *passthrough}))
            raise ConfigurationError(f"unknown {label} URL option {name!r}; known options: {known}")
    return values, passed


def read_secret(label: str, option: str, path: str) -> str:
    """The secret in the file ``option`` names (``password_file=`` and the like, DESIGN 13): its
    text without the trailing newline an editor or ``echo`` leaves. Errors name the option and
    the file, never what it holds."""
    try:
        with open(path, encoding="utf-8") as file:
            secret = file.read()
    except OSError as exc:
        raise ConfigurationError(
            f"{label} URL option {option}: cannot read {path!r} ({exc.strerror or exc})"
        ) from None
    except UnicodeDecodeError:
        raise ConfigurationError(
            f"{label} URL option {option}: {path!r} is not UTF-8 text"
        ) from None
    secret = secret.removesuffix("\n").removesuffix("\r")
    if not secret:
        raise ConfigurationError(f"{label} URL option {option}: {path!r} is empty")
    return secret


_SECRET_OPTIONS = ("password", "secret", "token", "key_password", "sasl_password")


def censor_url(url: str) -> str:
    """The URL with its password and secret-looking query values replaced by ``***``: what
    may appear in a log line, an error or a ``repr``."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            user, _, host = netloc.rpartition("@")
            name = user.partition(":")[0]
            netloc = f"{name}:***@{host}"
        query = "&".join(
            f"{k}=***" if any(s in k.lower() for s in _SECRET_OPTIONS) else f"{k}={v}"
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        )
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        return "<unparseable URL>"
