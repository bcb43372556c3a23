"""The job table's operations, each its own short transaction (the runner's side).

ORM only, so it runs on SQLite for development too, where ``SKIP LOCKED`` does not exist and a
single runner is supported (as for the relay).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import (
    Case,
    DateTimeField,
    ExpressionWrapper,
    F,
    Q,
    QuerySet,
    TextField,
    Value,
    When,
)
from django.db.models.functions import Concat, Now

from outbox.common.retry import RetryPolicy
from outbox.models import OutboxJob

__all__ = ["ClaimedJob", "RetryPolicy", "claim", "record_failure"]

Status = OutboxJob.Status

# The error a job gets when its runner stopped (was killed) during its last allowed run.
LEASE_EXPIRED_ERROR = "the runner stopped during the last allowed run (its lease expired)"


@dataclass(frozen=True)
class ClaimedJob:
    """A job leased to one runner, with ``attempts`` already counting the run to come."""

    id: int
    kind: str
    name: str
    key: str
    payload: dict[str, Any]
    attempts: int


def claimable(using: str) -> QuerySet[OutboxJob]:
    """Ready jobs that are due and not leased to a live runner."""
    return OutboxJob.objects.using(using).filter(
        Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lte=Now()),
        status=Status.READY,
        next_attempt_at__lte=Now(),
    )


def claim(
    *, using: str, owner: str, limit: int, lease_seconds: float, max_attempts: int
) -> list[ClaimedJob]:
    """Lease up to ``limit`` due jobs to ``owner``, oldest due first, counting their run.

    ``SKIP LOCKED``: concurrent runners claim different jobs, and a job whose handler is
    running right now (its row is locked by the run's transaction) is never claimed twice.
    A job that already had ``max_attempts`` runs comes back only when its runner died during
    the last one: it is marked failed here instead of run again.
    """
    with transaction.atomic(using=using):
        candidates = list(
            claimable(using)
            .select_for_update(skip_locked=True)
            .order_by("next_attempt_at", "id")
            .values_list("id", "attempts")[:limit]
        )
        exhausted = [job_id for job_id, attempts in candidates if attempts >= max_attempts]
        ids = [job_id for job_id, attempts in candidates if attempts < max_attempts]
        if exhausted:
            OutboxJob.objects.using(using).filter(id__in=exhausted).update(
                status=Status.FAILED,
                last_error=Case(
                    When(last_error="", then=Value(LEASE_EXPIRED_ERROR)),
                    default=Concat(
                        Value(f"{LEASE_EXPIRED_ERROR}; previous error: "), F("last_error")
                    ),
                    output_field=TextField(),
                ),
                lease_owner="",
                lease_expires_at=None,
            )
        if not ids:
            return []
        OutboxJob.objects.using(using).filter(id__in=ids).update(
            attempts=F("attempts") + 1,
            lease_owner=owner,
            lease_expires_at=_from_now(lease_seconds),
        )
        rows = (
            OutboxJob.objects.using(using)
            .filter(id__in=ids)
            .order_by("next_attempt_at", "id")
            .values_list("id", "kind", "name", "key", "payload", "attempts")
        )
        return [ClaimedJob(*row) for row in rows]


def record_failure(
    job: ClaimedJob, error: str, *, using: str, owner: str, retry: RetryPolicy
) -> bool:
    """After a failed run: back to ready after the backoff, or failed when that was the last
    run allowed. Returns True when the job is now failed. Only the lease holder's record
    counts (a runner whose lease was taken over records nothing)."""
    failed = job.attempts >= retry.max_attempts
    changes: dict[str, Any] = {"last_error": error, "lease_owner": "", "lease_expires_at": None}
    if failed:
        changes["status"] = Status.FAILED
    else:
        changes["next_attempt_at"] = _from_now(retry.delay_after(job.attempts))
    OutboxJob.objects.using(using).filter(id=job.id, lease_owner=owner).update(**changes)
    return failed


def release(jobs: list[ClaimedJob], *, using: str, owner: str) -> None:
    """Give back claimed jobs that were not run (the runner stops), their run uncounted."""
    if jobs:
        OutboxJob.objects.using(using).filter(
            id__in=[job.id for job in jobs], lease_owner=owner
        ).update(attempts=F("attempts") - 1, lease_owner="", lease_expires_at=None)


def _from_now(seconds: float) -> ExpressionWrapper[Any]:
    # The database's clock, the one the claim compares with.
    return ExpressionWrapper(
        Now() + Value(timedelta(seconds=seconds)), output_field=DateTimeField()
    )
