"""``eventbus run --workers N`` supervises its workers, in real processes on RabbitMQ (memory://
lives in one process): a crashed worker is restarted and loses nothing, a crash loop and a
startup failure end the parent; and a failing startup hook is one clear line, exit 7."""

from __future__ import annotations

import re
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from cli_harness import Parent, alive

from eventbus import EventBus, StartupHookError
from eventbus.supervisor import MAX_RESTARTS, Supervisor

APPS = Path(__file__).parent / "apps"

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def parents() -> Iterator[list[Parent]]:
    started: list[Parent] = []
    yield started
    for parent in started:
        parent.kill()


def start(parents: list[Parent], tmp_path: Path, *args: str, **env: str) -> Parent:
    parent = Parent(*args, cwd=APPS, out=tmp_path / "out.log", env=env)
    parents.append(parent)
    return parent


def app_env(tmp_path: Path, **more: str) -> dict[str, str]:
    return {
        "SUP_QUEUE": f"sup-{uuid.uuid4().hex[:8]}",
        "SUP_HANDLED": str(tmp_path / "handled.txt"),
        **more,
    }


def handled(tmp_path: Path) -> list[str]:
    path = tmp_path / "handled.txt"
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def send(url: str, queue: str, job_id: str) -> None:
    async def go() -> None:
        async with EventBus(url) as bus:
            await bus.send(queue, {"id": job_id})

    anyio.run(go)


def readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@pytest.mark.amqp
def test_a_crashed_worker_is_restarted_and_loses_nothing(
    amqp_url: str, tmp_path: Path, parents: list[Parent]
) -> None:
    from test_cli_metrics import free_port

    env = app_env(tmp_path)
    port = free_port()
    parent = start(
        parents,
        tmp_path,
        "supervised_app",
        "--workers",
        "2",
        "--url",
        amqp_url,
        "--metrics-port",
        str(port),
        "--metrics-host",
        "127.0.0.1",
        **env,
    )
    parent.wait_until("both workers ready", lambda: parent.text.count("ready ") >= 2)
    parent.wait_until("/readyz with both workers", lambda: readyz(port) == 200)
    first = dict(parent.started())

    send(amqp_url, env["SUP_QUEUE"], "crash")
    crashed = re.compile(r"worker (\d) exited with code 3; restarting in \d+\.\ds")
    parent.wait_until("the crash logged", lambda: crashed.search(parent.text))
    number = int(crashed.search(parent.text).group(1))  # type: ignore[union-attr]
    parent.wait_until("a new worker", lambda: len(parent.started()) == 3)
    again = parent.started()[-1]
    assert again[0] == number and again[1] != first[number], parent.started()
    # The crashed worker never settled its message: it comes back and is handled.
    parent.wait_until("the crash job redelivered", lambda: "crash" in handled(tmp_path))
    parent.wait_until("the new worker ready", lambda: f"ready {again[1]}" in parent.text)
    # The merged endpoint follows the new pid: both workers ready again.
    parent.wait_until("/readyz after the restart", lambda: readyz(port) == 200)

    send(amqp_url, env["SUP_QUEUE"], "after")
    parent.wait_until("a later job handled", lambda: "after" in handled(tmp_path))
    assert parent.stop() == 0, parent.text
    assert handled(tmp_path).count("crash") == 1


@pytest.mark.amqp
def test_a_crash_loop_makes_the_parent_give_up(
    amqp_url: str, tmp_path: Path, parents: list[Parent]
) -> None:
    env = app_env(tmp_path, SUP_ON_START="crash")
    began = time.monotonic()
    parent = start(parents, tmp_path, "supervised_app", "--workers", "2", "--url", amqp_url, **env)
    assert parent.proc.wait(timeout=120) == 3, parent.text
    assert time.monotonic() - began < 90
    assert f"after {MAX_RESTARTS} restarts within 60s; giving up" in parent.text
    assert len(parent.started()) <= 2 * (MAX_RESTARTS + 1)
    assert not any(alive(pid) for _, pid in parent.started()), "no worker outlives the parent"


@pytest.mark.amqp
def test_a_failing_startup_hook_under_workers_gives_up_at_once(
    amqp_url: str, tmp_path: Path, parents: list[Parent]
) -> None:
    env = app_env(tmp_path, SUP_ON_START="fail")
    parent = start(parents, tmp_path, "supervised_app", "--workers", "2", "--url", amqp_url, **env)
    assert parent.proc.wait(timeout=60) == 7, parent.text
    assert "startup hook supervised_app.seed failed: ConnectionError: database is down" in (
        parent.text
    )
    assert "which a restart cannot fix; giving up" in parent.text
    assert "restarting in" not in parent.text
    assert not any(alive(pid) for _, pid in parent.started())


def test_a_failing_startup_hook_is_one_line_and_exit_7(
    tmp_path: Path, parents: list[Parent]
) -> None:
    parent = start(parents, tmp_path, "supervised_app", **app_env(tmp_path, SUP_ON_START="fail"))
    assert parent.proc.wait(timeout=60) == 7, parent.text
    errors = [line for line in parent.text.splitlines() if line.startswith("eventbus:")]
    assert errors == [
        "eventbus: error: startup hook supervised_app.seed failed: "
        "ConnectionError: database is down"
    ], parent.text
    assert "Traceback" not in parent.text


async def test_a_failing_startup_hook_is_named_to_an_async_with_user() -> None:
    bus = EventBus(f"memory://hooks-{uuid.uuid4().hex}")

    @bus.on_startup
    async def seed() -> None:
        raise ConnectionError("database is down")

    with pytest.raises(ExceptionGroup) as caught:
        async with bus:
            await anyio.sleep(5)  # cancelled by the failing hook
    error = caught.value.exceptions[0]
    while isinstance(error, ExceptionGroup):
        error = error.exceptions[0]
    assert isinstance(error, StartupHookError)
    assert error.hook.startswith("test_cli_supervisor.")
    assert error.hook.endswith(".<locals>.seed")
    assert isinstance(error.__cause__, ConnectionError)
    assert "failed: ConnectionError: database is down" in str(error)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


async def test_a_fatal_exit_code_gives_up_at_once(caplog: pytest.LogCaptureFixture) -> None:
    supervisor = Supervisor(python("raise SystemExit(4)"), {}, 2, fatal=(4,))
    with anyio.fail_after(30):
        assert await supervisor.run() == 4
    assert "restarting" not in caplog.text


async def test_a_worker_that_exits_0_on_its_own_is_not_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", "eventbus.supervisor")
    supervisor = Supervisor(python("pass"), {}, 2, fatal=(4,))
    with anyio.fail_after(30):
        assert await supervisor.run() == 0
    assert caplog.text.count("started (pid") == 2
    assert "not restarted" in caplog.text


async def test_a_stop_during_the_backoff_ends_at_once_with_the_crash_code(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", "eventbus.supervisor")
    supervisor = Supervisor(python("raise SystemExit(9)"), {}, 1)
    codes: list[int] = []

    async def run() -> None:
        codes.append(await supervisor.run())

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            while "restarting in" not in caplog.text:  # noqa: ASYNC110 (polls the log)
                await anyio.sleep(0.01)
            supervisor.stop()
            stopped = anyio.current_time()
    assert anyio.current_time() - stopped < 0.2, "the backoff wait ends with the stop"
    assert codes == [9]
    assert caplog.text.count("started (pid") == 1
