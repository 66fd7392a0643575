"""A 0.1 and a 0.2 worker in one group during a rolling deploy lose nothing (DESIGN.md section 8,
"Versions and rolling upgrades"), on real Kafka and RabbitMQ.

An eventbus 0.1 worker (built from the release commit, fixture ``release_0_1``) and 0.2 workers
(this checkout, ``sys.executable``) share two groups through a rolling deploy: the 0.1 worker
joins a running 0.2 worker mid-stream, a second 0.2 worker starts, the 0.1 worker is stopped
with SIGTERM (`upgrade_harness` has the timeline). Messages fail on their first attempts by
design, so retries cross versions: through the broker in one group (the attempt count and the
routing to the group travel in headers written by one version and read by the other), in
process in the other (where per-key order is checked on every key).

One deploy runs per topology (a module fixture): Kafka, RabbitMQ with partitioned groups,
RabbitMQ with one queue per group (its default); the tests check its ledger. What must hold, in
each group: every published message is handled at least once or dead-lettered (lost = 0); the
dead letters are exactly the messages designed to be rejected or to run out of retries, with
the right reason and attempt count; a message succeeds at the attempt its plan says, whichever
versions ran the attempts before; retries through the broker crossed versions both ways;
per-key order holds (on keys without broker retries in that group; not on RabbitMQ's shared
queues, where it is not promised across processes) and a key never runs in two places at once;
every worker stops with exit code 0. Duplicates (at-least-once) are reported, not failed on.
The "rolling upgrade" section at the end of the run has each ledger.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from upgrade_harness import RABBIT_PARTITIONS, RollingDeploy, UpgradeLedger
from upgrade_release import OldRelease

import eventbus

NEW = (".".join(eventbus.__version__.split(".")[:2]), Path(sys.executable))


def _deploy(
    broker: str,
    url: str,
    release: OldRelease,
    workdir: Path,
    report: Callable[[str], None],
    **options: Any,
) -> UpgradeLedger:
    old = (".".join(release.version.split(".")[:2]), release.python)
    deploy = RollingDeploy(broker=broker, url=url, old=old, new=NEW, workdir=workdir, **options)
    ledger = asyncio.run(deploy.run())
    ledger.logs = deploy.logs()
    report(ledger.summary())
    return ledger


def _check(ledger: UpgradeLedger) -> None:
    problems = ledger.problems()
    assert not problems, "\n".join([*problems, ledger.summary(), ledger.logs])


# -- Kafka --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kafka_deploy(
    kafka_url: str,
    release_0_1: OldRelease,
    tmp_path_factory: pytest.TempPathFactory,
    upgrade_report: Callable[[str], None],
) -> UpgradeLedger:
    return _deploy(
        "kafka", kafka_url, release_0_1, tmp_path_factory.mktemp("kafka"), upgrade_report
    )


@pytest.mark.kafka
def test_kafka_rolling_deploy_loses_nothing(kafka_deploy: UpgradeLedger) -> None:
    _check(kafka_deploy)


@pytest.mark.kafka
def test_kafka_routing_headers_stay_in_the_adapter(kafka_deploy: UpgradeLedger) -> None:
    # 0.1 retries carry eventbus-target-group / eventbus-not-before; the 0.2 Kafka adapter
    # reads and strips them, so 0.2 handlers and dead letters never see them.
    assert not kafka_deploy.routing_header_leaks(), kafka_deploy.summary()


# -- RabbitMQ -----------------------------------------------------------------------------------


def _with_partitions(url: str, partitions: int) -> str:
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, f"partitions={partitions}") if q)
    return urlunsplit(parts._replace(query=query))


@pytest.fixture(scope="module")
def rabbitmq_deploy(
    amqp_url: str,
    release_0_1: OldRelease,
    tmp_path_factory: pytest.TempPathFactory,
    upgrade_report: Callable[[str], None],
) -> UpgradeLedger:
    """Partitioned groups: keys spread over the workers, per-key order kept across them."""
    return _deploy(
        "rabbitmq",
        _with_partitions(amqp_url, RABBIT_PARTITIONS),
        release_0_1,
        tmp_path_factory.mktemp("rabbit"),
        upgrade_report,
        partitions=RABBIT_PARTITIONS,
    )


@pytest.fixture(scope="module")
def rabbitmq_shared_queue_deploy(
    amqp_url: str,
    release_0_1: OldRelease,
    tmp_path_factory: pytest.TempPathFactory,
    upgrade_report: Callable[[str], None],
) -> UpgradeLedger:
    """The default topology: one queue per group, competing consumers (a key may run in two
    processes at once there, so per-key order is not checked)."""
    return _deploy(
        "rabbitmq",
        amqp_url,
        release_0_1,
        tmp_path_factory.mktemp("rabbit-shared"),
        upgrade_report,
        per_key_order=False,
    )


@pytest.mark.amqp
def test_rabbitmq_rolling_deploy_loses_nothing(rabbitmq_deploy: UpgradeLedger) -> None:
    _check(rabbitmq_deploy)


@pytest.mark.amqp
def test_rabbitmq_shared_queue_rolling_deploy_loses_nothing(
    rabbitmq_shared_queue_deploy: UpgradeLedger,
) -> None:
    _check(rabbitmq_shared_queue_deploy)


@pytest.mark.amqp
def test_rabbitmq_routing_headers_stay_out_of_handlers(rabbitmq_deploy: UpgradeLedger) -> None:
    assert not rabbitmq_deploy.routing_header_leaks(), rabbitmq_deploy.summary()
