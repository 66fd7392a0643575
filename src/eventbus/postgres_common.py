"""What the PostgreSQL-backed parts (the dedup store, the outbox) share: how they take a DSN or
a pool, their address without the password, and which asyncpg errors mean a lost connection.

asyncpg is an optional extra (``pip install 'eventbus[postgres]'``), imported only by these
parts when one is made: a process that uses neither never imports it.
"""

from __future__ import annotations

from typing import Any

from eventbus.errors import ConfigurationError

__all__ = ["import_asyncpg", "is_transient", "postgres_address", "postgres_target", "redact"]

_SCHEMES = ("postgresql://", "postgres://")


def postgres_target(dsn_or_pool: object) -> tuple[str | None, Any]:
    """``(dsn, None)`` for a ``postgresql://`` DSN, ``(None, pool)`` for an ``asyncpg.Pool``
    the caller owns; `ConfigurationError` for anything else. asyncpg is imported first, so a
    missing extra fails at construction, not on the first message."""
    asyncpg = import_asyncpg()
    if isinstance(dsn_or_pool, str):
        if not dsn_or_pool.startswith(_SCHEMES):
            raise ConfigurationError(
                "dsn_or_pool must be a postgresql:// DSN (e.g. "
                "'postgresql://user:password@127.0.0.1:5432/db') or an asyncpg.Pool, "
                f"got {redact(dsn_or_pool)!r}"
            )
        return dsn_or_pool, None
    if isinstance(dsn_or_pool, asyncpg.Pool):
        return None, dsn_or_pool
    raise ConfigurationError(
        f"dsn_or_pool must be a PostgreSQL DSN or an asyncpg.Pool, got {type(dsn_or_pool).__name__}"
    )


def postgres_address(dsn: str | None, pool: object) -> str:
    """The DSN without its password (the pool's repr when given a pool), for logs and errors."""
    return redact(dsn) if dsn is not None else repr(pool)


def import_asyncpg() -> Any:
    try:
        import asyncpg  # type: ignore[import-untyped, unused-ignore]
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(
            "PostgreSQL support (PostgresDedupStore, PostgresOutbox) needs asyncpg: "
            "pip install 'eventbus[postgres]'"
        ) from exc
    return asyncpg


def is_transient(exc: Exception) -> bool:
    """A lost or refused connection (not a statement timeout, not a bad statement)."""
    asyncpg = import_asyncpg()
    if isinstance(exc, asyncpg.QueryCanceledError):
        return False
    return isinstance(
        exc, OSError | asyncpg.PostgresConnectionError | asyncpg.OperatorInterventionError
    )


def redact(dsn: str) -> str:
    """The DSN without its password (``user:password@`` or ``?password=``), for messages and
    reprs."""
    scheme, sep, rest = dsn.partition("://")
    rest, qmark, query = rest.partition("?")
    if query:
        query = "&".join(
            f"{name}=***" if "password" in name.lower() else f"{name}{eq}{value}"
            for name, eq, value in (item.partition("=") for item in query.split("&"))
        )
    userinfo, at, host = rest.rpartition("@")
    if sep and at and ":" in userinfo:
        rest = f"{userinfo.split(':', 1)[0]}:***@{host}"
    return f"{scheme}{sep}{rest}{qmark}{query}"
