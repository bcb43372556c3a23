"""Local jobs: work written in a business transaction and run after it commits, in this
service, with retries: the durable counterpart of ``transaction.on_commit``.

A job row is written like an outbox row (same transaction, so it exists if and only if the
transaction committed) but is never sent to RabbitMQ: a runner (``manage.py outbox_jobs``,
or the Celery task ``outbox.tasks.run_jobs``) claims it after the commit and calls the
executor registered for its ``kind``. ``domain_events`` registers one for durable
after-commit handlers (``@handler(Event, on_commit="durable")``), which is what most
projects use; ``enqueue`` and ``register_executor`` are the layer underneath.

Roles: ``executors`` (which function runs a kind), ``writer`` (``enqueue``), ``store`` (the
table: claim, finish, retry), ``runner`` (the loop). docs/concepts.md has the guarantees.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from outbox.common.lazy import lazy_exports
from outbox.jobs.executors import Executor, register_executor

if TYPE_CHECKING:
    from outbox.jobs.runner import RunResult, run_due_jobs
    from outbox.jobs.writer import Job, enqueue

__all__ = ["Executor", "Job", "RunResult", "enqueue", "register_executor", "run_due_jobs"]

_LAZY = {
    "Job": "outbox.jobs.writer",
    "enqueue": "outbox.jobs.writer",
    "RunResult": "outbox.jobs.runner",
    "run_due_jobs": "outbox.jobs.runner",
}

__getattr__ = lazy_exports(__name__, _LAZY)
