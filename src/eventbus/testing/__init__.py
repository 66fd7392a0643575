"""Test helpers: `TestBus` for testing an app's handlers, access to the in-memory broker, and
the transport conformance suite (`eventbus.testing.conformance`)."""

from eventbus.testing.outcomes import Attempt, Outcome, PublishResult
from eventbus.testing.testbus import TestBus
from eventbus.transports.memory import MemoryBroker, memory_broker

__all__ = ["Attempt", "MemoryBroker", "Outcome", "PublishResult", "TestBus", "memory_broker"]
