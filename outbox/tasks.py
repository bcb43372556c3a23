"""Celery tasks of the outbox, for Celery beat to schedule. Each is a thin call into the module
that does the work.

``publish_outbox`` is the relay, every second by default; ``run_jobs`` runs the local jobs
(durable after-commit handlers), every second too; the purges run hourly. The library
gives the schedule, so a project does not paste it::

    from outbox.schedule import beat_schedule

    CELERY_BEAT_SCHEDULE = beat_schedule()
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, cast

from celery import shared_task
from django.db import DatabaseError, connections

from outbox import conf
from outbox.consumer.inbox import purge_inbox as purge_inbox_records
from outbox.jobs.runner import run_due_jobs
from outbox.operations import actions
from outbox.relay import Relay, RelaySettings
from outbox.relay.store import ClaimedMessage, OutboxStore, store_for
from outbox.schedule import beat_schedule

__all__ = ["beat_schedule", "publish_outbox", "purge_inbox", "purge_outbox", "run_jobs"]

logger = logging.getLogger("outbox.relay")

# One relay (so one RabbitMQ connection) per worker process and thread, kept between runs:
# opening an AMQP connection costs more than a typical run's work.
_local = threading.local()


@shared_task(name="outbox.tasks.publish_outbox", ignore_result=True)
def publish_outbox(time_budget: float | None = None, kicked_at: float | None = None) -> int:
    """Publish ready outbox rows for up to ``time_budget`` seconds (default
    ``OUTBOX["TASK_TIME_BUDGET_SECONDS"]``) and return how many were published.

    Overlapping runs, on one worker or many, are safe: each claims different rows. A broker
    or database outage ends the run early without using up any row's attempts; the next run
    tries again. ``kicked_at`` is set by the kick on commit (``outbox.kick``): the time the
    kick was sent, after the commits it announces. A kick sent before the last claim of a
    drain that this worker process completed since is skipped: that claim found nothing left
    of what those commits wrote. So kicks that queued up behind a drain cost no claim each.
    """
    if kicked_at is not None and kicked_at < getattr(_local, "drained_since", float("-inf")):
        return 0
    relay = _relay()
    budget = conf.get_float("TASK_TIME_BUDGET_SECONDS") if time_budget is None else time_budget
    started = time.monotonic()
    try:
        result = relay.drain(time_budget=budget)
    except DatabaseError as error:
        connections[relay.using].close()
        logger.warning("publish_outbox: database unavailable: %s", error)
        return 0
    if result.broker_error is not None:
        logger.warning("publish_outbox: broker unavailable: %s", result.broker_error)
    elif time.monotonic() - started < budget:
        # Within its budget a drain ends only on an empty claim, its last: nothing committed
        # before that claim started is left claimable.
        _local.drained_since = _local.claims.last_claim_at
    return result.published


@shared_task(name="outbox.tasks.run_jobs", ignore_result=True)
def run_jobs(time_budget: float | None = None, kicked_at: float | None = None) -> int:
    """Run the local jobs that are due (durable after-commit handlers) for up to
    ``time_budget`` seconds (default ``OUTBOX["TASK_TIME_BUDGET_SECONDS"]``); return how many
    ran. Overlapping runs are safe: each claims other jobs. ``kicked_at`` is set by the kick
    on commit (``outbox.kick``); a kick is a wake-up, so the run is the same either way."""
    budget = conf.get_float("TASK_TIME_BUDGET_SECONDS") if time_budget is None else time_budget
    try:
        result = run_due_jobs(time_budget=budget)
    except DatabaseError as error:
        for connection in connections.all(initialized_only=True):
            connection.close()
        logger.warning("run_jobs: database unavailable: %s", error)
        return 0
    return result.done


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
        settings = RelaySettings.from_settings()
        _local.claims = _ClaimClock(store_for(retry=settings.retry_policy()))
        relay = Relay(store=cast(OutboxStore, _local.claims), settings=settings)
        _local.relay = relay
    return relay


class _ClaimClock:
    """The relay's store, which also notes when the latest claim started (wall clock, as
    ``kicked_at`` is); everything else is passed through to the store unchanged."""

    def __init__(self, store: OutboxStore) -> None:
        self._store = store
        self.last_claim_at = float("-inf")

    def claim(self, **arguments: Any) -> list[ClaimedMessage]:
        self.last_claim_at = time.time()
        return self._store.claim(**arguments)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)
