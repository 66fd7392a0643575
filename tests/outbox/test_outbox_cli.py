"""``eventbus outbox relay`` as a real process: an app's bus or ``--db``; clear errors."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from outbox_helpers import REPO, RelayProcess, Seen, eventually, order_violations

from eventbus import EventBus
from eventbus.outbox import SqliteOutbox


def _relay(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventbus", "outbox", "relay", *args],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.amqp
async def test_relay_of_an_app_publishes_and_stops_on_sigterm(
    amqp_url: str, sqlite_path: Path, name: str, tmp_path: Path
) -> None:
    conn = sqlite3.connect(sqlite_path)
    writer = SqliteOutbox(sqlite_path)
    consumer = EventBus(amqp_url)
    seen = Seen()
    seen.subscribe(consumer, name)
    env = {"OUTBOX_APP_DB": str(sqlite_path), "EVENTBUS_URL": amqp_url}
    async with consumer:
        relay = RelayProcess("tests.outbox.outbox_app", out=tmp_path / "relay.log", env=env)
        try:
            for seq in range(100):
                await writer.publish(conn, name, {"seq": seq}, key=f"k{seq % 3}")
                if seq % 10 == 9:
                    conn.commit()
            await seen.wait_for(100, within=60)
            assert relay.stop() == 0, relay.text
        finally:
            relay.kill()
    assert order_violations(seen.items) == 0
    assert len(seen.items) == 100
    assert "relayed 100 row(s)" in relay.text
    assert conn.execute("SELECT count(*) FROM eventbus_outbox").fetchone() == (0,)
    conn.close()


@pytest.mark.postgres
async def test_unreachable_database_is_retried_and_logged_without_password(
    kafka_url: str, tmp_path: Path
) -> None:
    env = {"EVENTBUS_OUTBOX_DB": "postgresql://app:s3cret@127.0.0.1:1/app"}
    relay = RelayProcess("--url", kafka_url, out=tmp_path / "relay.log", env=env)
    try:
        await eventually(lambda: "trying again" in relay.text)
        await anyio.sleep(1.0)
        assert relay.proc.poll() is None  # still trying
        assert relay.stop() == 0
    finally:
        relay.kill()
    assert "postgresql://app:***@127.0.0.1:1/app" in relay.text
    assert "s3cret" not in relay.text


@pytest.mark.postgres
def test_wrong_password_exits_4_naming_the_address(postgres_url: str, kafka_url: str) -> None:
    scheme, rest = postgres_url.split("://", 1)
    user, host = rest.split(":", 1)[0], rest.rsplit("@", 1)[1]
    wrong = f"{scheme}://{user}:wrong-s3cret@{host}"
    done = _relay("--url", kafka_url, env={"EVENTBUS_OUTBOX_DB": wrong})
    assert done.returncode == 4, done.stderr
    assert f"{user}:***@{host}" in done.stderr
    assert "wrong-s3cret" not in done.stderr + done.stdout


def test_command_line_errors(tmp_path: Path) -> None:
    done = _relay()
    assert done.returncode == 2
    assert "give an app MODULE:ATTR, or --db" in done.stderr
    done = _relay("--url", "memory://", "--db", str(tmp_path / "x.sqlite3"))
    assert done.returncode == 4
    assert "memory:// lives inside one process" in done.stderr
    done = _relay("--url", "kafka://127.0.0.1:9", "--db", "x.db", "--table", "bad-name")
    assert done.returncode == 4
    assert "plain SQL identifier" in done.stderr
    done = _relay("--url", "kafka://127.0.0.1:9", "--db", "mysql://u:pw@h/db")
    assert done.returncode == 4
    assert "u:***@h" in done.stderr


def test_an_app_on_memory_is_refused(tmp_path: Path) -> None:
    done = _relay(
        "tests.outbox.outbox_app",
        env={"OUTBOX_APP_DB": str(tmp_path / "x.sqlite3"), "EVENTBUS_URL": "memory://"},
    )
    assert done.returncode == 4
    assert "lives inside one process" in done.stderr
    done = _relay("tests.outbox.outbox_app", "--db", "x.db", env={"OUTBOX_APP_DB": "x.db"})
    assert done.returncode == 2
    assert "not both" in done.stderr
