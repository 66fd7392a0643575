"""A worker for the JSON log test: a startup hook publishes one job whose handler logs a line
and then rejects it, so the core logs its dead-lettering too (both while handling the job)."""

import logging

from eventbus import EventBus, Reject

bus = EventBus("memory://cli-logging-app")
log = logging.getLogger("logging_app")


@bus.subscribe("jobs", group="workers")
async def refuse(job: dict) -> None:  # type: ignore[type-arg]
    log.info("looking at job %s", job["id"])
    raise Reject("never wanted")


@bus.on_startup
async def produce() -> None:
    await bus.publish("jobs", {"id": 7}, message_id="job-7")
    log.info("published job-7")
