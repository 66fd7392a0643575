"""An app whose handler cannot be injected: the CLI must refuse it at import (exit code 4)."""

from eventbus import EventBus

bus = EventBus("memory://cli-bad-handler")


@bus.subscribe("jobs", group="g")
async def untyped_job_handler(job) -> None:  # type: ignore[no-untyped-def]
    pass
