"""Test helpers: the transport conformance suite and access to the in-memory broker."""

from eventbus.transports.memory import MemoryBroker, memory_broker

__all__ = ["MemoryBroker", "memory_broker"]
