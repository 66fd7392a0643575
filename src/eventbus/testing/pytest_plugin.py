"""pytest fixtures for testing eventbus apps, registered by entry point (``pytest11``): installing
eventbus is enough, nothing to add to ``pytest_plugins``.

One line of ``conftest.py`` hands the app to the plugin::

    @pytest.fixture
    def eventbus_app() -> EventBus:
        return bus                      # the app's bus, e.g. `from myservice.app import bus`

and a test takes a running `eventbus.testing.TestBus` around it::

    async def test_handle(eventbus_client: TestBus) -> None:
        result = await eventbus_client.publish("in", User(name="John"))
        assert result.handled_with == User(name="John")

Fixtures (all per test):

- ``eventbus_client``: the app's bus running in a `TestBus`. An async fixture: it needs
  pytest-asyncio (either mode; when pytest-asyncio is installed the fixture is declared with
  ``pytest_asyncio.fixture``) or, without pytest-asyncio, anyio's pytest plugin
  (``@pytest.mark.anyio`` tests).
- ``eventbus_testbus``: the same `TestBus`, not started (a plain fixture): ``async with
  eventbus_testbus as client:`` under any runner, e.g. anyio's plugin alongside pytest-asyncio.
- ``eventbus_url``: ``memory://<unique name>``, a broker no other test shares, and
  ``eventbus_broker``: that broker, for inspection (``published``, ``ready``); emptied after
  the test.
- ``eventbus_app``: override it in ``conftest.py`` to return the app's `EventBus`.

Importing this module imports the core only when a fixture runs, and no optional dependency.
"""

from __future__ import annotations

import contextlib
import importlib.util
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from eventbus.bus import EventBus
    from eventbus.testing.testbus import TestBus
    from eventbus.transports.memory import MemoryBroker

__all__ = [
    "eventbus_app",
    "eventbus_broker",
    "eventbus_broker_name",
    "eventbus_client",
    "eventbus_testbus",
    "eventbus_url",
]


@pytest.fixture
def eventbus_broker_name() -> str:
    return f"eventbus-test-{uuid.uuid4().hex}"


@pytest.fixture
def eventbus_url(eventbus_broker_name: str) -> str:
    """``memory://<unique name>``: an in-memory broker only this test uses."""
    return f"memory://{eventbus_broker_name}"


@pytest.fixture
def eventbus_broker(eventbus_broker_name: str) -> Iterator[MemoryBroker]:
    """The broker behind ``eventbus_url``; emptied after the test."""
    from eventbus.transports.memory import memory_broker

    broker = memory_broker(eventbus_broker_name)
    yield broker
    broker.reset()


@pytest.fixture
def eventbus_app() -> EventBus:
    """Override in conftest.py: return the app's `EventBus`."""
    raise pytest.UsageError(
        "eventbus_client needs your bus: define a fixture `eventbus_app` in conftest.py that "
        "returns it (e.g. `return myservice.app.bus`)"
    )


@pytest.fixture
def eventbus_testbus(eventbus_app: EventBus) -> TestBus:
    """A `TestBus` around ``eventbus_app``, not started: ``async with eventbus_testbus as c:``."""
    from eventbus.testing.testbus import TestBus

    return TestBus(eventbus_app)


async def _client(eventbus_testbus: TestBus) -> AsyncIterator[TestBus]:
    """The app's bus running in a `TestBus` for the test (needs an async fixture runner)."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:  # not asyncio (trio, through anyio's runner: one task throughout)
        async with eventbus_testbus as client:
            yield client
        return
    async with _in_a_task_of_its_own(eventbus_testbus) as client:
        yield client


@contextlib.asynccontextmanager
async def _in_a_task_of_its_own(testbus: TestBus) -> AsyncIterator[TestBus]:
    """Enter and leave ``testbus`` in one task of its own. pytest-asyncio runs a fixture's
    setup and its teardown in two different tasks, and the bus's task group (an anyio cancel
    scope) must be left in the task that entered it."""
    import asyncio

    entered, leave = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with testbus:
            entered.set()
            await leave.wait()

    task = asyncio.create_task(hold())
    started = asyncio.create_task(entered.wait())
    await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    started.cancel()
    if task.done():
        task.result()  # the bus failed to start: raise its error here
    try:
        yield testbus
    finally:
        leave.set()
        await task


def _async_fixture() -> Any:
    # Declared for pytest-asyncio when it is installed, so that its strict mode runs it too;
    # otherwise a plain async fixture, which anyio's plugin runs for anyio tests.
    if importlib.util.find_spec("pytest_asyncio") is not None:
        import pytest_asyncio

        return pytest_asyncio.fixture(name="eventbus_client")
    return pytest.fixture(name="eventbus_client")


eventbus_client = _async_fixture()(_client)
