"""The secured listeners ``scripts/brokers`` provisions beside the plain ones (docs/security.md):
their URLs and the throwaway certificates, from ``scripts/brokers env``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tls_helpers import Certs

REQUIRE_VAR = "EVENTBUS_REQUIRE_BROKERS"


def _env(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        reason = (
            f'{name} is not set: run `eval "$(scripts/brokers env)"` after `scripts/brokers up`'
        )
        if os.environ.get(REQUIRE_VAR, "").strip() not in ("", "0"):
            pytest.fail(f"{reason} ({REQUIRE_VAR} is set)", pytrace=False)
        pytest.skip(reason)
    return value


@pytest.fixture(scope="session")
def certs() -> Certs:
    return Certs(Path(_env("EVENTBUS_TEST_CERTS")))


@pytest.fixture(scope="session")
def amqps_url() -> str:
    """``amqps://localhost:5671/``: mutual TLS, EXTERNAL or PLAIN logins."""
    return _env("EVENTBUS_TEST_AMQPS")


@pytest.fixture(scope="session")
def kafka_ssl_url() -> str:
    """``kafka://localhost:9095``: TLS with client certificates required (User:eventbus-client)."""
    return _env("EVENTBUS_TEST_KAFKA_SSL")


@pytest.fixture(scope="session")
def kafka_sasl_url() -> str:
    """``kafka://localhost:9096``: SASL_SSL, SCRAM-SHA-512 and PLAIN (eventbus-app, limited)."""
    return _env("EVENTBUS_TEST_KAFKA_SASL_SSL")
