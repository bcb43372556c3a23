"""Celery tasks of the outbox, for Celery beat to schedule. Each is a thin call into the module
that does the work.

``publish_outbox`` is the relay, every second by default; the purges run hourly. The library
gives the schedule, so a project does not paste it::

    from outbox.schedule import beat_schedule

    CELERY_BEAT_SCHEDULE = beat_schedule()
"""

from __future__ import annotations

import logging
import threading

from celery import shared_task
from django.db import DatabaseError, connections

from outbox import conf
from outbox.consumer.inbox import purge_inbox as purge_inbox_records
from outbox.operations import actions
from outbox.relay import Relay
from outbox.schedule import beat_schedule

__all__ = ["beat_schedule", "publish_outbox", "purge_inbox", "purge_outbox"]

logger = logging.getLogger("outbox.relay")

# One relay (so one RabbitMQ connection) per worker process and thread, kept between runs:
# opening an AMQP connection costs more than a typical run's work.
_local = threading.local()


@shared_task(name="outbox.tasks.publish_outbox", ignore_result=True)
def publish_outbox(time_budget: float | None = None) -> int:
    """Publish ready outbox rows for up to ``time_budget`` seconds (default
    ``OUTBOX["TASK_TIME_BUDGET_SECONDS"]``) and return how many were published.

    Overlapping runs, on one worker or many, are safe: each claims different rows. A broker
    or database outage ends the run early without using up any row's attempts; the next run
    tries again.
    """
    relay = _relay()
    budget = conf.get_float("TASK_TIME_BUDGET_SECONDS") if time_budget is None else time_budget
    try:
        result = relay.drain(time_budget=budget)
    except DatabaseError as error:
        connections[relay.using].close()
        logger.warning("publish_outbox: database unavailable: %s", error)
        return 0
    if result.broker_error is not None:
        logger.warning("publish_outbox: broker unavailable: %s", result.broker_error)
    return result.published


@shared_task(name="outbox.tasks.purge_inbox", ignore_result=True)
def purge_inbox() -> int:
    """Delete inbox records older than ``OUTBOX["INBOX_RETENTION"]``, in batches."""
    return purge_inbox_records()


@shared_task(name="outbox.tasks.purge_outbox", ignore_result=True)
def purge_outbox(max_batches: int | None = None) -> int:
    """Delete published rows older than ``OUTBOX["RETENTION"]``, in ``OUTBOX["PURGE_BATCH_SIZE"]``
    batches; ``max_batches`` caps one run so a first purge of a large table is spread over
    several runs. Returns the rows deleted (also logged by ``outbox.operations``)."""
    return actions.purge_published(max_batches=max_batches)


def _relay() -> Relay:
    relay: Relay | None = getattr(_local, "relay", None)
    if relay is None:
        relay = Relay()
        _local.relay = relay
    return relay
