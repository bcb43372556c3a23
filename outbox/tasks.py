"""Celery tasks of the outbox, for Celery beat to schedule."""

from __future__ import annotations

from celery import shared_task

from outbox.inbox import purge_inbox as purge_inbox_records


@shared_task(name="outbox.purge_inbox", ignore_result=True)
def purge_inbox() -> int:
    """Delete inbox records older than ``OUTBOX["INBOX_RETENTION_DAYS"]``, in batches."""
    return purge_inbox_records()
