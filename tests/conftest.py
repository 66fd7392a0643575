"""Where the real brokers are: session fixtures ``kafka_url``, ``amqp_url``, ``redis_url``,
``postgres_url``, ``registry_url`` (DESIGN.md section 7).

Each endpoint is resolved in this order:

1. the environment variable: ``EVENTBUS_TEST_KAFKA`` (``kafka://127.0.0.1:9092``),
   ``EVENTBUS_TEST_AMQP`` (``amqp://guest:guest@127.0.0.1:5672/``),
   ``EVENTBUS_TEST_REDIS`` (``redis://127.0.0.1:6379/0``),
   ``EVENTBUS_TEST_POSTGRES`` (``postgresql://eventbus:eventbus@127.0.0.1:5432/eventbus_test``),
   ``EVENTBUS_TEST_REGISTRY`` (``http://127.0.0.1:8081/apis/ccompat/v7``, a Confluent-compatible
   schema registry); ``eval "$(scripts/brokers up && scripts/brokers env)"`` provisions all of
   them natively;
2. a container started with testcontainers, when a Docker engine is reachable (stopped at the
   end of the session);
3. otherwise the test is skipped with the reason, or fails when ``EVENTBUS_REQUIRE_BROKERS=1``
   (CI sets it, so a missing broker can never pass as a skipped test).

Only the endpoint fixtures live here; subdirectories add their own conftest.py files.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from types import ModuleType
from typing import Any

import pytest

ENV_VARS = {
    "kafka": "EVENTBUS_TEST_KAFKA",
    "amqp": "EVENTBUS_TEST_AMQP",
    "redis": "EVENTBUS_TEST_REDIS",
    "postgres": "EVENTBUS_TEST_POSTGRES",
    "registry": "EVENTBUS_TEST_REGISTRY",
}
REQUIRE_VAR = "EVENTBUS_REQUIRE_BROKERS"
HINT = 'run `eval "$(scripts/brokers up && scripts/brokers env)"` or set {var}'


class BrokerUnavailable(Exception):
    """No endpoint for a broker; the message says why."""


def resolve_endpoint(broker: str, containers: ExitStack) -> str:
    """Return the URL of ``broker`` ("kafka", "amqp", "redis", "postgres" or "registry").

    The environment variable wins; else a testcontainers container is started (and registered
    on ``containers`` to be stopped later) if Docker is reachable; else ``BrokerUnavailable``.
    """
    var = ENV_VARS[broker]
    url = os.environ.get(var, "").strip()
    if url:
        return url
    reason = docker_unavailable_reason()
    if reason is not None:
        raise BrokerUnavailable(
            f"no {broker} broker: {var} is not set and {reason}; " + HINT.format(var=var)
        )
    try:
        return CONTAINERS[broker](containers)
    except Exception as exc:  # an image pull or a start failed: report it like a missing broker
        raise BrokerUnavailable(
            f"no {broker} broker: testcontainers could not start one: {exc!r}"
        ) from exc


def endpoint_or_skip(broker: str, containers: ExitStack) -> str:
    """``resolve_endpoint``, turning "unavailable" into a skip, or a failure when required."""
    try:
        return resolve_endpoint(broker, containers)
    except BrokerUnavailable as exc:
        if os.environ.get(REQUIRE_VAR, "").strip() not in ("", "0"):
            pytest.fail(f"{exc} ({REQUIRE_VAR} is set)", pytrace=False)
        pytest.skip(str(exc))


@functools.cache
def docker_unavailable_reason() -> str | None:
    """None when a Docker engine answers a ping, else why containers cannot be used."""
    try:
        docker = importlib.import_module("docker")
    except ImportError:
        return "testcontainers (and the docker package) is not installed"
    try:
        client = docker.from_env(timeout=5)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        return f"no Docker engine is reachable ({type(exc).__name__}: {str(exc)[:160]})"
    return None


# --- testcontainers: imported lazily, used only when Docker is reachable ----------------------


def _tc(module: str) -> ModuleType:
    """``testcontainers.<module>``; 4.14+ moved the modules under ``testcontainers.community``."""
    try:
        return importlib.import_module(f"testcontainers.community.{module}")
    except ModuleNotFoundError:
        return importlib.import_module(f"testcontainers.{module}")


def _host_port(container: Any, port: int) -> str:
    return f"{container.get_container_host_ip()}:{container.get_exposed_port(port)}"


def _kafka_container(stack: ExitStack) -> str:
    kafka = (
        _tc("kafka")
        .KafkaContainer("confluentinc/cp-kafka:7.9.0")
        .with_kraft()
        .with_env("KAFKA_MESSAGE_MAX_BYTES", "10485760")
        .with_env("KAFKA_REPLICA_FETCH_MAX_BYTES", "10485760")
    )
    stack.enter_context(kafka)
    return f"kafka://{kafka.get_bootstrap_server()}"


def _amqp_container(stack: ExitStack) -> str:
    core = importlib.import_module("testcontainers.core.container")
    waiting = importlib.import_module("testcontainers.core.waiting_utils")
    rabbit = core.DockerContainer("rabbitmq:3.13").with_exposed_ports(5672)
    stack.enter_context(rabbit)
    waiting.wait_for_logs(rabbit, "Server startup complete", timeout=120)
    rabbit.exec(
        ["rabbitmq-plugins", "enable", "rabbitmq_sharding", "rabbitmq_consistent_hash_exchange"]
    )
    return f"amqp://guest:guest@{_host_port(rabbit, 5672)}/"


def _redis_container(stack: ExitStack) -> str:
    redis = _tc("redis").RedisContainer("redis:7")
    stack.enter_context(redis)
    return f"redis://{_host_port(redis, 6379)}/0"


def _postgres_container(stack: ExitStack) -> str:
    postgres = _tc("postgres").PostgresContainer(
        "postgres:15", username="eventbus", password="eventbus", dbname="eventbus_test", driver=None
    )
    stack.enter_context(postgres)
    return f"postgresql://eventbus:eventbus@{_host_port(postgres, 5432)}/eventbus_test"


def _registry_container(stack: ExitStack) -> str:
    core = importlib.import_module("testcontainers.core.container")
    waiting = importlib.import_module("testcontainers.core.waiting_utils")
    registry = core.DockerContainer("apicurio/apicurio-registry-mem:2.6.13.Final")
    registry = registry.with_exposed_ports(8080)
    stack.enter_context(registry)
    waiting.wait_for_logs(registry, "Listening on", timeout=120)
    return f"http://{_host_port(registry, 8080)}/apis/ccompat/v7"


CONTAINERS: dict[str, Callable[[ExitStack], str]] = {
    "kafka": _kafka_container,
    "amqp": _amqp_container,
    "redis": _redis_container,
    "postgres": _postgres_container,
    "registry": _registry_container,
}


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def broker_containers() -> Iterator[ExitStack]:
    """Containers started for this session; stopped when it ends."""
    with ExitStack() as stack:
        yield stack


@pytest.fixture(scope="session")
def kafka_url(broker_containers: ExitStack) -> str:
    """``kafka://host:port`` of a real Kafka broker."""
    return endpoint_or_skip("kafka", broker_containers)


@pytest.fixture(scope="session")
def amqp_url(broker_containers: ExitStack) -> str:
    """``amqp://user:password@host:port/`` of a real RabbitMQ broker."""
    return endpoint_or_skip("amqp", broker_containers)


@pytest.fixture(scope="session")
def redis_url(broker_containers: ExitStack) -> str:
    """``redis://host:port/db`` of a real Redis server."""
    return endpoint_or_skip("redis", broker_containers)


@pytest.fixture(scope="session")
def postgres_url(broker_containers: ExitStack) -> str:
    """``postgresql://user:password@host:port/db`` of a real PostgreSQL server."""
    return endpoint_or_skip("postgres", broker_containers)


@pytest.fixture(scope="session")
def registry_url(broker_containers: ExitStack) -> str:
    """``http://host:port/path`` of a real Confluent-compatible schema registry."""
    return endpoint_or_skip("registry", broker_containers)
