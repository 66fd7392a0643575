"""An app built for a transport that is not installed (exit code 4)."""

from eventbus import EventBus

bus = EventBus("nosuch://127.0.0.1:1")
