"""TLS handshake failures no retry can fix, as `AuthenticationError`s: shared by the adapters,
whose clients wrap the ssl error (aiormq) or only log it (aiokafka's bootstrap)."""

from __future__ import annotations

import ssl
from base64 import b64decode

from eventbus.errors import AuthenticationError

__all__ = ["client_context", "tls_refused", "why_unloadable"]

# The alerts a server sends when it refuses the client's certificate (or has none of it).
_REFUSED_ALERTS = (
    "UNKNOWN_CA",
    "CERTIFICATE_REQUIRED",
    "BAD_CERTIFICATE",
    "CERTIFICATE_EXPIRED",
    "CERTIFICATE_REVOKED",
    "CERTIFICATE_UNKNOWN",
    "UNSUPPORTED_CERTIFICATE",
    "ACCESS_DENIED",
    "HANDSHAKE_FAILURE",
)


def tls_refused(
    error: BaseException, broker: str, address: str, user: str
) -> AuthenticationError | None:
    """The `AuthenticationError` for a TLS handshake that failed for good -- we refused the
    server's certificate (untrusted, or not for this host name), or the server refused ours --
    or None. ``user`` says who was connecting, as the adapter names it in errors. The cause and
    context chain is searched: clients wrap the ssl error. Anything else (an EOF during a
    broker restart, say) may pass and is the caller's to retry."""
    seen: BaseException | None = error
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return AuthenticationError(
                f"TLS to {broker} at {address} (as {user}): the server's certificate was refused "
                f"({seen.verify_message or seen}); check the CA file and the host name in the URL"
            )
        if isinstance(seen, ssl.SSLError):
            reason = (seen.reason or str(seen)).upper()
            if any(alert in reason for alert in _REFUSED_ALERTS):
                return AuthenticationError(
                    f"TLS to {broker} at {address} (as {user}): the server refused the handshake "
                    f"({seen.reason or seen}); check the client certificate and key"
                )
            return None
        seen = seen.__cause__ or seen.__context__
    return None


def why_unloadable(error: OSError | ValueError) -> str:
    """Why TLS files could not be loaded into a context, for a `ConfigurationError`: OpenSSL's
    reason (not PEM, a wrong key password), the file system's (unreadable), or the error."""
    return getattr(error, "reason", None) or getattr(error, "strerror", None) or str(error)


def client_context(
    *,
    cafile: str | None = None,
    capath: str | None = None,
    cadata: str | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    key_password: str | None = None,
) -> ssl.SSLContext:
    """A client's TLS context: the system's CAs or the given ones (``cadata`` in base64, as
    AMQP URIs carry it), host names checked, and a client certificate for mutual TLS. An
    encrypted key without ``key_password`` fails here (`ssl.SSLError`) -- never with OpenSSL's
    own prompt on a terminal. Raises `OSError` (unreadable, not PEM) or `ValueError` (bad
    base64) for the caller to name its own options (`why_unloadable`)."""
    context = ssl.create_default_context(
        cafile=cafile, capath=capath, cadata=b64decode(cadata) if cadata else None
    )
    if certfile:
        context.load_cert_chain(certfile, keyfile, lambda: key_password or "")
    return context
