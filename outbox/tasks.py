"""Celery tasks of the outbox (the relay's ``publish_outbox`` joins them here)."""

from __future__ import annotations

from celery import shared_task

from outbox import operations


@shared_task(name="outbox.purge_outbox", ignore_result=True)
def purge_outbox(max_batches: int | None = None) -> int:
    """Delete published rows older than ``OUTBOX["RETENTION"]``; schedule it with beat.

    Runs in ``OUTBOX["PURGE_BATCH_SIZE"]`` batches; ``max_batches`` caps one run so a
    first purge of a large table is spread over several runs. Returns the rows deleted
    (also logged by ``outbox.operations``).
    """
    return operations.purge_published(max_batches=max_batches)
