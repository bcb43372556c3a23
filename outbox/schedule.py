"""The outbox's Celery beat schedule. This module imports nothing from Django or Celery, so a
settings module can use it::

    from outbox.schedule import beat_schedule

    CELERY_BEAT_SCHEDULE = beat_schedule()

``outbox.tasks.beat_schedule`` is the same function.
"""

from __future__ import annotations

from typing import Any

__all__ = ["beat_schedule"]


def beat_schedule(
    *, publish_every: float = 1.0, purge_every: float = 3600.0, jobs_every: float | None = 1.0
) -> dict[str, dict[str, Any]]:
    """Celery beat entries for the outbox, to merge into ``CELERY_BEAT_SCHEDULE``.

    ``outbox-publish`` runs ``publish_outbox`` every ``publish_every`` seconds; its runs expire
    after ten periods, so runs that queued while no worker was free are dropped, not replayed
    in a burst (overlapping runs are safe: each claims other rows). ``outbox-jobs`` runs
    ``run_jobs`` (durable after-commit handlers) every ``jobs_every`` seconds, expiring the
    same way; ``None`` leaves it out, for a project whose ``outbox_jobs`` command runs them.
    ``outbox-purge`` and ``outbox-purge-inbox`` run the two purges every ``purge_every``
    seconds.
    """
    if publish_every <= 0 or purge_every <= 0 or (jobs_every is not None and jobs_every <= 0):
        raise ValueError(
            "beat_schedule(): publish_every, purge_every and jobs_every must be positive"
        )
    jobs: dict[str, dict[str, Any]] = {}
    if jobs_every is not None:
        jobs["outbox-jobs"] = {
            "task": "outbox.tasks.run_jobs",
            "schedule": jobs_every,
            "options": {"expires": max(10.0, 10 * jobs_every)},
        }
    return {
        "outbox-publish": {
            "task": "outbox.tasks.publish_outbox",
            "schedule": publish_every,
            "options": {"expires": max(10.0, 10 * publish_every)},
        },
        **jobs,
        "outbox-purge": {"task": "outbox.tasks.purge_outbox", "schedule": purge_every},
        "outbox-purge-inbox": {"task": "outbox.tasks.purge_inbox", "schedule": purge_every},
    }
