"""The job runner: claim due jobs, run each in its own transaction with its at-most-once
record, retry failures with backoff, fail them in the end.

Used by the Celery task ``outbox.tasks.run_jobs`` and by ``manage.py outbox_jobs``.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from django.db import router, transaction

from outbox import conf
from outbox.consumer import inbox
from outbox.jobs import store
from outbox.jobs.executors import executor_for
from outbox.models import OutboxJob

__all__ = ["RunResult", "run_claimed", "run_due_jobs", "runner_name"]

logger = logging.getLogger("outbox.jobs")

Outcome = Literal["done", "skipped", "retried", "failed"]


@dataclass
class RunResult:
    """What one run of the runner did: jobs run and deleted (``done``), not run by this
    runner (``skipped``: found already run and deleted, or taken over by another runner
    once this one's lease had expired), failed and waiting for a retry (``retried``), failed
    for good (``failed``)."""

    done: int = 0
    skipped: int = 0
    retried: int = 0
    failed: int = 0

    def count(self, outcome: Outcome) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)

    def __str__(self) -> str:
        return (
            f"done {self.done}, skipped {self.skipped}, retried {self.retried},"
            f" failed {self.failed}"
        )


def runner_name() -> str:
    """A lease owner name unique to this runner: host, process and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def run_due_jobs(
    *,
    using: str | None = None,
    time_budget: float | None = None,
    batch_size: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RunResult:
    """Run every job that is due now, batch after batch, until none is left.

    Stops early, giving back the jobs it claimed but did not start (their run uncounted),
    once ``time_budget`` seconds have passed or ``should_stop()`` is true. Database errors
    propagate (a job being run keeps its lease and comes back when it expires).
    """
    if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(f"batch_size must be at least 1, got {batch_size!r}")
    if time_budget is not None and time_budget < 0:
        raise ValueError(f"time_budget must not be negative, got {time_budget!r}")
    alias = using or router.db_for_write(OutboxJob)
    owner = runner_name()
    retry = store.RetryPolicy.from_settings("JOB_")
    lease = conf.get_float("JOB_LEASE_SECONDS")
    limit = batch_size if batch_size is not None else conf.get_int("JOB_BATCH_SIZE")
    deadline = None if time_budget is None else time.monotonic() + time_budget

    def out_of_time() -> bool:
        return (deadline is not None and time.monotonic() >= deadline) or (
            should_stop is not None and should_stop()
        )

    result = RunResult()
    while not out_of_time():
        claimed = store.claim(
            using=alias,
            owner=owner,
            limit=limit,
            lease_seconds=lease,
            max_attempts=retry.max_attempts,
        )
        if not claimed:
            break
        for position, job in enumerate(claimed):
            if position and out_of_time():
                store.release(claimed[position:], using=alias, owner=owner)
                return result
            result.count(run_claimed(job, using=alias, owner=owner, retry=retry))
    return result


def run_claimed(
    job: store.ClaimedJob, *, using: str, owner: str, retry: store.RetryPolicy
) -> Outcome:
    """Run one claimed job in its own transaction and record the outcome.

    The transaction locks the job's row (so no other runner can claim it while it runs),
    writes its inbox record (consumer ``"<kind>:<name>"``, message id ``key``), runs the
    executor and deletes the job: the executor's writes, the record and the deletion commit
    together or not at all. A record that already exists means the job ran before: it is
    deleted without running again.
    """
    try:
        with transaction.atomic(using=using):
            held = list(
                OutboxJob.objects.using(using)
                .select_for_update()
                .filter(id=job.id, lease_owner=owner)
                .values_list("id", flat=True)
            )
            if not held:
                # Another runner took it over after our lease expired, or an operator
                # deleted it: it is not ours to run.
                return "skipped"
            first_run = inbox.claim(f"{job.kind}:{job.name}", job.key, using=using)
            if first_run:
                executor_for(job.kind)(job.name, job.payload)
            OutboxJob.objects.using(using).filter(id=job.id).delete()
    except Exception as error:
        failed = store.record_failure(
            job, f"{type(error).__name__}: {error}", using=using, owner=owner, retry=retry
        )
        logger.error(
            "job %s %s for %s: run %d of %d failed%s",
            job.kind,
            job.name,
            job.key,
            job.attempts,
            retry.max_attempts,
            "; it is now failed" if failed else "; it will be retried",
            exc_info=True,
            extra={"event": "job_failed" if failed else "job_retried", "job": job.id},
        )
        return "failed" if failed else "retried"
    if not first_run:
        logger.info(
            "job %s %s for %s already ran: skipped",
            job.kind,
            job.name,
            job.key,
            extra={"event": "job_skipped", "job": job.id},
        )
        return "skipped"
    return "done"
