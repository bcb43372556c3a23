"""Writing local jobs in the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from outbox import kick
from outbox.exceptions import InvalidMessageError, TransactionRequiredError
from outbox.models import OutboxJob

__all__ = ["Job", "enqueue"]

_LIMITS = {"kind": 64, "name": 190, "key": 255}


@dataclass(frozen=True)
class Job:
    """One job to write: ``executor_for(kind)(name, payload)`` runs once, after the commit.

    ``key`` is what the job is about (an event id): a job whose (kind, name, key) is already
    waiting is not written twice, and one that already ran is skipped when run again.
    ``payload`` is a JSON object, encoded as outbox payloads are.
    """

    kind: str
    name: str
    key: str
    payload: dict[str, Any]


def enqueue(jobs: Sequence[Job], *, using: str) -> None:
    """Write ``jobs`` in the current transaction on ``using``, in one INSERT.

    They are run after the transaction commits, never after a rollback. Must run inside
    ``transaction.atomic(using=using)``: a job written outside a transaction would not be tied
    to anything. With the kick on commit (``OUTBOX["KICK_ON_COMMIT"]``), the commit also
    sends the ``run_jobs`` Celery task, so the jobs do not wait for beat.
    """
    if not jobs:
        return
    if not transaction.get_connection(using).in_atomic_block:
        raise TransactionRequiredError(
            "local jobs run after their transaction commits, so enqueue() must run inside"
            f" transaction.atomic(using={using!r})"
        )
    rows = []
    for position, job in enumerate(jobs):
        for field, limit in _LIMITS.items():
            value = getattr(job, field)
            if not isinstance(value, str) or not 1 <= len(value) <= limit:
                raise InvalidMessageError(
                    f"job {position}: {field} must be a string of 1-{limit} characters,"
                    f" got {value!r}"
                )
        if not isinstance(job.payload, dict):
            raise InvalidMessageError(f"job {position}: payload must be a dict")
        rows.append(OutboxJob(kind=job.kind, name=job.name, key=job.key, payload=job.payload))
    # A job already waiting for the same (kind, name, key) is the same work: keep one.
    OutboxJob.objects.using(using).bulk_create(rows, ignore_conflicts=True)
    if kick.enabled():
        kick.after_commit(using, kick.JOBS)
