"""The pytest plugin as a user meets it: installed by entry point, one conftest fixture naming
the app, tests taking ``eventbus_client`` under pytest-asyncio (auto and strict mode) or anyio's
plugin; each run in a pytest process of its own."""

import subprocess
import sys

import pytest

pytest_plugins = ["pytester"]

APP = """
import pydantic
from eventbus import EventBus, RetryPolicy

class User(pydantic.BaseModel):
    name: str

bus = EventBus("memory://shared-by-the-app")

@bus.subscribe("in", group="users", retry=RetryPolicy(max_attempts=3, initial_delay=30))
async def handle(user: User) -> None:
    if user.name == "bad":
        raise ValueError("bad user")
"""

AUTO = "asyncio_mode = auto\nasyncio_default_fixture_loop_scope = function"
STRICT = "asyncio_mode = strict\nasyncio_default_fixture_loop_scope = function"

CONFTEST = """
import pytest
from myapp import bus

@pytest.fixture
def eventbus_app():
    return bus
"""

TESTS = """
import pytest
from eventbus.testing import MemoryBroker, TestBus
from myapp import User, bus, handle

{mark}
async def test_handle(eventbus_client: TestBus) -> None:
    result = await eventbus_client.publish("in", User(name="John"))
    assert result.handled_with == User(name="John")

{mark}
async def test_dead_letter(eventbus_client: TestBus) -> None:
    result = await eventbus_client.publish("in", User(name="bad"))
    assert (result.reason, len(result.attempts)) == ("retries-exhausted", 3)
    assert eventbus_client.published("in.users.dlq")[0].id == result.message.id

{mark}
async def test_each_test_starts_empty(eventbus_client: TestBus) -> None:
    assert eventbus_client.published("in") == []

{mark}
async def test_unstarted_testbus(eventbus_testbus: TestBus) -> None:
    async with eventbus_testbus as client:
        assert (await client.publish("in", User(name="a"))).outcome(handle).handled

def test_a_private_broker_per_test(eventbus_url: str, eventbus_broker: MemoryBroker) -> None:
    assert eventbus_url.startswith("memory://eventbus-test-")
    assert eventbus_broker.log == deque()

def test_the_app_is_put_back() -> None:
    assert bus.url == "memory://shared-by-the-app" and bus.subscribers[0].observer is None
""".replace("import pytest", "import pytest\nfrom collections import deque")


def write_project(pytester: pytest.Pytester, ini: str, mark: str = "") -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile(myapp=APP)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_user_app=TESTS.format(mark=mark))


def test_with_pytest_asyncio_auto_mode(pytester: pytest.Pytester) -> None:
    write_project(pytester, AUTO)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)


def test_with_pytest_asyncio_strict_mode(pytester: pytest.Pytester) -> None:
    write_project(pytester, STRICT, mark="@pytest.mark.asyncio")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)


def test_with_anyio_and_no_asyncio_plugin(pytester: pytest.Pytester) -> None:
    write_project(pytester, "", mark="@pytest.mark.anyio")
    backend = "\n@pytest.fixture\ndef anyio_backend():\n    return 'asyncio'\n"
    pytester.makeconftest(CONFTEST + backend)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:asyncio")
    result.assert_outcomes(passed=6)


def test_without_an_eventbus_app_fixture_the_error_says_what_to_write(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(f"[pytest]\n{AUTO}\n")
    pytester.makepyfile(
        test_forgot="""
async def test_client(eventbus_client) -> None:
    pass
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*define a fixture `eventbus_app` in conftest.py*"])


def test_importing_the_plugin_imports_no_optional_dependency() -> None:
    code = (
        "import sys, eventbus.testing.pytest_plugin; "
        "heavy = {'aiokafka', 'aiormq', 'opentelemetry', 'prometheus_client', 'redis', "
        "'asyncpg', 'eventbus_kafka', 'eventbus_rabbitmq'}; "
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
