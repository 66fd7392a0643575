"""An app whose bus relays a SQLite outbox, for ``eventbus outbox relay tests.outbox.outbox_app``.

``OUTBOX_APP_DB``: the SQLite file; ``EVENTBUS_URL``: the broker.
"""

from __future__ import annotations

import os

from eventbus import EventBus
from eventbus.outbox import SqliteOutbox

outbox = SqliteOutbox(os.environ["OUTBOX_APP_DB"], retention=0)
bus = EventBus(outbox=outbox)


@bus.subscribe("never-started-by-the-relay", group="g")
async def handler(payload: dict[str, int]) -> None:
    raise AssertionError("a relay process runs no handler")
