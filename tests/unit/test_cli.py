"""The ``eventbus`` command: ``run`` in real processes (signals, exit codes), ``publish`` and
``dlq`` in process through `eventbus.cli.main`."""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import eventbus
from eventbus import EventBus, Message, Reject, RetryPolicy
from eventbus import headers as h
from eventbus.cli import build_parser, main
from eventbus.dlq import replay_destination
from eventbus.testing import MemoryBroker
from eventbus.testing.conformance import wait_for
from eventbus.transports.registry import transport_for_url

APPS = Path(__file__).parent / "apps"

pytestmark = pytest.mark.timeout(180)


class Worker:
    """``python -m eventbus ARGS`` run from the apps directory, its output collected live."""

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        new_group: bool = False,
        launcher: tuple[str, ...] = (sys.executable,),
    ) -> None:
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        environment.pop("EVENTBUS_URL", None)
        self.proc = subprocess.Popen(
            [*launcher, "-m", "eventbus", *args],
            cwd=APPS,
            env=environment,
            start_new_session=new_group,  # its own process group, as a service manager runs it
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: object, into: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            into.append(line)

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def wait_for_output(self, text: str, *, stderr: bool = False, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        while text not in (self.stderr if stderr else self.stdout):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.finish(within=5)
                raise AssertionError(
                    f"no {text!r} (exit {self.proc.returncode}); stdout:\n{self.stdout}\n"
                    f"stderr:\n{self.stderr}"
                )
            time.sleep(0.05)

    def finish(self, within: float = 60.0) -> int:
        code = self.proc.wait(timeout=within)
        for reader in self._readers:
            reader.join(timeout=10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.kill()


def run_cli(workers: list[Worker], *args: str, env: dict[str, str] | None = None) -> Worker:
    worker = Worker(*args, env=env)
    workers.append(worker)
    return worker


# -- eventbus run -------------------------------------------------------------------------------


def test_sigterm_drains_the_in_flight_handler(workers: list[Worker]) -> None:
    worker = run_cli(workers, "run", "slow_app:bus", env={"APP_SLEEP": "2"})
    worker.wait_for_output("started 1")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.finish() == 0, worker.stderr
    assert worker.stdout.splitlines() == ["started 1", "finished 1"]
    assert "subscribed: work <- topic jobs group workers" in worker.stderr


def test_second_sigterm_during_the_drain_exits_130(workers: list[Worker]) -> None:
    worker = run_cli(
        workers,
        "run",
        "slow_app:bus",
        "--graceful-timeout",
        "600",
        env={"APP_SLEEP": "300"},
    )
    worker.wait_for_output("started 1")
    worker.proc.send_signal(signal.SIGTERM)
    worker.wait_for_output("stopping", stderr=True)
    worker.proc.send_signal(signal.SIGTERM)
    # Promptly: far sooner than the handler (300 s) or the graceful timeout (600 s).
    assert worker.finish(within=60) == 130, worker.stderr
    assert "finished" not in worker.stdout
    assert "second signal" in worker.stderr


def test_sigint_is_handled_like_sigterm(workers: list[Worker]) -> None:
    worker = run_cli(workers, "run", "slow_app", env={"APP_SLEEP": "0.5"})  # ATTR defaults to bus
    worker.wait_for_output("started 1")
    worker.proc.send_signal(signal.SIGINT)
    assert worker.finish() == 0, worker.stderr
    assert "finished 1" in worker.stdout


def test_json_logs_tag_each_line_with_the_message_being_handled(workers: list[Worker]) -> None:
    worker = run_cli(
        workers, "run", "logging_app:bus", "--log-format", "JSON", "--log-level", "INFO"
    )
    worker.wait_for_output("dead-lettering job-7", stderr=True)
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.finish() == 0, worker.stderr
    lines = [json.loads(line) for line in worker.stderr.splitlines()]  # every line is JSON
    by_text = {entry["message"]: entry for entry in lines}
    handled = by_text["looking at job 7"]
    assert handled["level"] == "info" and handled["logger"] == "logging_app"
    assert (handled["message_id"], handled["topic"], handled["group"], handled["attempt"]) == (
        "job-7",
        "jobs",
        "workers",
        1,
    )
    assert handled["handler"] == "refuse"
    (letter,) = [e for e in lines if e["message"].startswith("refuse <- topic jobs")]
    assert letter["level"] == "warning" and letter["message_id"] == "job-7"
    outside = by_text["published job-7"]
    assert "message_id" not in outside, "not handling anything there"
    assert "trace_id" not in handled, "no tracing configured"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_module:bus", "cannot import 'no_such_module'"),
        ("broken_app:bus", "broken at import time"),
        ("slow_app:missing", "expected an EventBus at slow_app.missing, found nothing"),
        ("slow_app:not_a_bus", "found str"),
        ("slow_app:work", "found function"),
    ],
)
def test_import_problems_exit_3(workers: list[Worker], target: str, message: str) -> None:
    worker = run_cli(workers, "run", target)
    assert worker.finish() == 3, worker.stderr
    assert message in worker.stderr
    assert worker.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bad_scheme_app:bus"], "no eventbus transport is installed for scheme 'nosuch'"),
        (["slow_app:bus", "--url", "nosuch://x:1"], "installed: "),
        (["slow_app:bus", "--url", "not-a-url"], "bad eventbus URL"),
        (["slow_app:bus", "--url", "memory://x/y"], "bad memory transport URL"),
        (["bad_handler_app:bus"], "untyped_job_handler"),
        (["slow_app:bus", "--workers", "2"], "memory:// lives inside one process"),
    ],
)
def test_configuration_problems_exit_4(
    workers: list[Worker], args: list[str], message: str
) -> None:
    worker = run_cli(workers, "run", *args)
    assert worker.finish() == 4, worker.stderr
    assert message in worker.stderr
    if "nosuch" in " ".join(args) or "bad_scheme" in args[0]:
        assert "memory://" in worker.stderr, "the installed schemes are listed"
    assert "started" not in worker.stdout


def test_bad_command_line_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main([])
    assert caught.value.code == 2
    with pytest.raises(SystemExit) as caught:
        main(["run"])
    assert caught.value.code == 2


# -- eventbus publish -----------------------------------------------------------------------------


def test_publish_to_a_queue(
    url: str, broker: MemoryBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["publish", "jobs", "--url", url, "--json", '{"id": 1}', "--queue", "--key", "k"]
    assert main([*args, "--header", "tenant=a=b"]) == 0
    printed = capsys.readouterr().out.strip()
    [message] = broker.ready("jobs")
    assert message.id == printed
    assert message.key == "k" and message.headers == {"tenant": "a=b"}
    assert json.loads(message.body) == {"id": 1}


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--json", "{nope"], "not valid JSON"), (["--json", "{}", "--header", "x"], "name=value")],
)
def test_publish_bad_input_exits_2(
    url: str,
    broker: MemoryBroker,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["publish", "jobs", "--url", url, "--queue", *extra])
    assert caught.value.code == 2
    assert message in capsys.readouterr().err
    assert not broker.log


# -- eventbus dlq ----------------------------------------------------------------------------------


def _fill_dead_letters(url: str, count: int) -> None:
    """Run a bus whose billing group rejects ``count`` orders (shipping handles them fine)."""

    async def fill() -> None:
        bus = EventBus(url)
        once = RetryPolicy(max_attempts=1)

        @bus.subscribe("orders", group="billing", retry=once)
        async def bill(order: dict, message: Message) -> None:  # type: ignore[type-arg]
            raise Reject(f"cannot bill {message.id}")

        @bus.subscribe("orders", group="shipping")
        async def ship(order: dict) -> None:  # type: ignore[type-arg]
            pass

        async with bus:
            for i in range(count):
                await bus.publish("orders", {"id": i}, message_id=f"d{i}", headers={"t": "x"})
            await wait_for(lambda: bus.subscribers[0].stats.dead_lettered == count)
            await wait_for(lambda: bus.subscribers[1].stats.handled == count)

    anyio.run(fill)


DLQ = "orders.billing.dlq"


def _depth(url: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["dlq", "list", DLQ, "--url", url]) == 0
    return capsys.readouterr().out.strip()


def test_dlq_list_show_replay_purge(
    url: str, broker: MemoryBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill_dead_letters(url, 3)
    assert _depth(url, capsys) == f"{DLQ}\t3"
    assert main(["dlq", "list", DLQ, "nothing.dlq", "--url", url]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{DLQ}\t3", "nothing.dlq\t-"]

    assert main(["dlq", "show", DLQ, "--limit", "3", "--url", url]) == 0
    shown = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [s["id"] for s in shown] == ["d0", "d1", "d2"]
    assert shown[0]["body"] == {"id": 0}
    assert shown[0]["headers"][h.DLQ_REASON] == "rejected"
    assert shown[0]["headers"][h.ERROR_MESSAGE] == "cannot bill d0"
    assert shown[0]["headers"]["t"] == "x"
    assert _depth(url, capsys) == f"{DLQ}\t3", "show leaves them in place"

    with pytest.raises(SystemExit) as caught:
        main(["dlq", "purge", DLQ, "--url", url])
    assert caught.value.code == 2
    assert "--yes" in capsys.readouterr().err
    assert _depth(url, capsys) == f"{DLQ}\t3", "purge without --yes deletes nothing"

    assert main(["dlq", "replay", DLQ, "--limit", "1", "--url", url]) == 0
    assert capsys.readouterr().out.strip() == "replayed 1"
    assert _depth(url, capsys) == f"{DLQ}\t2"
    [replayed] = broker.ready("orders", "billing")
    assert replayed.id == "d0" and json.loads(replayed.body) == {"id": 0}
    [(replay_to, _)] = [(d, m) for d, m in broker.log if m.id == "d0" and d.name == "orders"][-1:]
    assert replay_to.group == "billing"
    assert replayed.headers["t"] == "x"
    assert not [k for k in replayed.headers if k in h.DEAD_LETTER_HEADERS or k == h.ATTEMPT]
    assert broker.ready("orders", "shipping") == [], "only the failed group gets the replay"

    assert main(["dlq", "purge", DLQ, "--yes", "--url", url]) == 0
    assert capsys.readouterr().out.strip() == "purged 2"
    assert _depth(url, capsys) == f"{DLQ}\t0"
    assert [m.id for m in broker.ready("orders", "billing")] == ["d0"]


def test_dlq_replay_everything(
    url: str, broker: MemoryBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill_dead_letters(url, 4)
    assert main(["dlq", "replay", DLQ, "--url", url]) == 0
    assert capsys.readouterr().out.strip() == "replayed 4"
    assert [m.id for m in broker.ready("orders", "billing")] == ["d0", "d1", "d2", "d3"]
    assert broker.ready(DLQ) == []


def test_dlq_list_for_an_app(
    url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill_dead_letters(url, 2)
    monkeypatch.chdir(APPS)
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_bus adds the working directory
    assert main(["dlq", "list", "--app", "dlq_app:bus", "--url", url]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{DLQ}\t2", "emails.dlq\t-"]


def test_dlq_needs_a_name_and_a_url(
    url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["dlq", "list", "--url", url])
    assert caught.value.code == 2
    assert "name a dead-letter queue" in capsys.readouterr().err
    monkeypatch.delenv("EVENTBUS_URL", raising=False)
    with pytest.raises(SystemExit) as caught:
        main(["dlq", "show", DLQ])
    assert caught.value.code == 2
    assert "--url" in capsys.readouterr().err


def test_a_password_in_the_url_shows_nowhere(tmp_path: Path) -> None:
    # DESIGN 8, secrets: not in a log line, an error, nor another process's command line.
    # The broker is unreachable, so the workers log, retry and fail with exit code 5.
    secret = "S3cr3t-pw-9a7"
    url = f"amqp://app:{secret}@127.0.0.1:1/?connect_timeout=3"
    worker = Worker("run", "slow_app:bus", "--url", url, "--workers", "2", "--log-level", "debug")
    seen_children = 0
    deadline = time.monotonic() + 30
    while worker.proc.poll() is None and time.monotonic() < deadline:
        # -ww: the whole command line (piped, ps cuts it at 80 columns); only this parent's
        # children (another run of this test may be going on at the same time).
        table = subprocess.run(
            ["ps", "-ww", "-eo", "ppid,args"], capture_output=True, text=True
        ).stdout
        children = [
            line
            for line in table.splitlines()
            if line.split(maxsplit=1)[0] == str(worker.proc.pid)
            and "slow_app:bus --workers 1" in line
        ]
        seen_children = max(seen_children, len(children))
        assert all(secret not in line for line in children), children
        time.sleep(0.1)
    code = worker.finish(within=30)
    assert seen_children == 2, "both workers were looked at while they ran"
    assert code == 5, worker.stderr
    assert "127.0.0.1:1" in worker.stderr, "the error still names the address"
    assert secret not in worker.stdout + worker.stderr


def _signal_group(worker: Worker, signum: int) -> None:
    """As a terminal or a process manager does it: to the whole process group."""
    os.killpg(worker.proc.pid, signum)


UV_RUN = ("uv", "run", "--no-sync", "--project", str(APPS.parents[2]), "python")


@pytest.mark.parametrize(
    ("launcher", "copies"),
    [((sys.executable,), 2), (UV_RUN, 1)],
    ids=["twice-to-the-group", "under-uv-run"],
)
def test_one_ctrl_c_drains_gracefully(launcher: tuple[str, ...], copies: int) -> None:
    # A terminal signals the whole process group, and `uv run` forwards its own copy to the
    # worker too: SIGINTs within a few milliseconds are one Ctrl-C, not "stop now". Sent to the
    # process group with no terminal, as a process manager does.
    if launcher[0] == "uv" and shutil.which("uv") is None:
        pytest.fail("uv is not on PATH (scripts/test puts it there)")
    env = {"APP_SLEEP": "1.5"}
    worker = Worker("run", "slow_app:bus", env=env, new_group=True, launcher=launcher)
    worker.wait_for_output("started 1")
    for _ in range(copies):
        _signal_group(worker, signal.SIGINT)
        time.sleep(0.05)
    assert worker.finish(within=30) == 0, worker.stderr
    assert "finished 1" in worker.stdout, "the in-flight handler was let finish"
    assert "second signal" not in worker.stderr


def test_a_second_signal_ends_the_process_even_while_a_sync_handler_hangs() -> None:
    worker = Worker("run", "hang_app:bus", new_group=True)
    worker.wait_for_output("started 1")
    _signal_group(worker, signal.SIGTERM)
    time.sleep(1.0)
    _signal_group(worker, signal.SIGTERM)  # SIGTERM is never taken for the same signal
    began = time.monotonic()
    assert worker.finish(within=30) == 130, worker.stderr
    assert time.monotonic() - began < 15, "exited soon after the second signal"
    assert "second signal" in worker.stderr and "exiting now" in worker.stderr


@pytest.mark.amqp
async def test_a_forced_exit_acks_nothing_unsettled(amqp_url: str) -> None:
    # On a real broker: the message whose handler hung is back in its queue after the forced
    # exit (never acked), ready for the next worker.
    queue = f"cli-hang-{uuid.uuid4().hex[:8]}"
    env = {"HANG_URL": amqp_url, "HANG_QUEUE": queue}
    worker = Worker("run", "hang_app:bus", env=env, new_group=True)
    worker.wait_for_output("started 1")
    _signal_group(worker, signal.SIGINT)
    await anyio.sleep(1.0)
    _signal_group(worker, signal.SIGINT)
    assert worker.finish(within=30) == 130, worker.stderr
    transport = transport_for_url(amqp_url)
    await transport.connect()
    try:
        deadline = time.monotonic() + 30
        while await transport.depth(queue, "queue") != 1:
            assert time.monotonic() < deadline, "the hung message is back in its queue"
            await anyio.sleep(0.2)
    finally:
        await transport.close()


def test_a_replayed_dead_letter_keeps_its_reply_address() -> None:
    letter = Message(
        id="m-1",
        topic="orders.g.dlq",
        body=b"{}",
        headers={h.ORIGINAL_TOPIC: "orders", h.ORIGINAL_GROUP: "g", h.DLQ_REASON: "rejected"},
        correlation_id="c-1",
        reply_to="replies.client-7",
    )
    to, original = replay_destination(letter)
    assert (to.name, to.group) == ("orders", "g")
    assert (original.reply_to, original.correlation_id) == ("replies.client-7", "c-1")
    assert h.DLQ_REASON not in original.headers


def test_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "eventbus", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert done.stdout.strip() == f"eventbus {eventbus.__version__}"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "slow_app:bus", "--workers", "0"], "must be at least 1, got 0"),
        (["run", "slow_app:bus", "--graceful-timeout", "-1"], "must be at least 0, got -1"),
        (["run", "slow_app:bus", "--graceful-timeout", "nan"], "must be at least 0, got nan"),
        (["run", "slow_app:bus", "--workers", "two"], "expected a number, got 'two'"),
        (["dlq", "show", "q", "--limit", "0"], "must be at least 1, got 0"),
        (["status", "--queue", "q", "--watch", "0"], "must be at least 0.1, got 0"),
    ],
)
def test_bad_numbers_are_refused_before_anything_runs(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_purge_asks_for_yes_before_connecting(capsys: pytest.CaptureFixture[str]) -> None:
    # An unreachable broker: asking first means exit 2 at once, not 5 after connect retries.
    started = time.monotonic()
    with pytest.raises(SystemExit) as caught:
        main(["dlq", "purge", "orders.g.dlq", "--url", "amqp://guest:guest@127.0.0.1:1/"])
    assert caught.value.code == 2
    assert "add --yes" in capsys.readouterr().err
    assert time.monotonic() - started < 5


def test_every_option_states_its_default() -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    missing = []
    for name, command in commands.items():
        subs = [command]
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                subs = list(action.choices.values())
        for sub in subs:
            for action in sub._actions:
                if not action.option_strings or action.default in (None, False, [], "==SUPPRESS=="):
                    continue
                if "default" not in (action.help or ""):
                    missing.append(f"{name} {'/'.join(action.option_strings)}")
    assert not missing, missing
