"""The operational numbers of the outbox, read in one place.

The admin summary, ``outbox_status`` and the Prometheus gauges all show these figures, so they
agree by construction. Every query here is bounded by an index: ready and failed rows through
the partial indexes the relay uses, recent publishes through ``outbox_published_at_idx``. The
published count alone can be large; past ``EXACT_COUNT_LIMIT`` rows it is PostgreSQL's
estimate, flagged as such.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from django.db import connections, router
from django.db.models import Count, Max, Min, Q, QuerySet
from django.db.models.functions import Now

from outbox import conf
from outbox.common.database import database_now
from outbox.models import OutboxJob, OutboxMessage
from outbox.relay.publishers import UNROUTABLE_ERROR_PREFIX

# "Is a relay publishing?" looks this far back.
RELAY_ACTIVITY_WINDOW = timedelta(seconds=60)
# Recent throughput is averaged over this window.
THROUGHPUT_WINDOW = timedelta(minutes=5)
# Below this many rows (by PostgreSQL's estimate), published rows are counted exactly.
EXACT_COUNT_LIMIT = 100_000

_ESTIMATED_ROWS_SQL = "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass"

__all__ = [
    "Backlog",
    "JobBacklog",
    "LatestError",
    "OutboxSummary",
    "backlog",
    "estimated_table_rows",
    "job_backlog",
    "stuck_after",
    "stuck_condition",
    "summary",
]


@dataclass(frozen=True)
class LatestError:
    """The error of the unpublished row retried last: what an operator reads first."""

    message_id: str
    status: str
    event_type: str
    exchange: str
    routing_key: str
    attempts: int
    error: str


@dataclass(frozen=True)
class OutboxSummary:
    """A snapshot of the outbox: how much is waiting, how old it is, whether it moves.

    ``unroutable``: unpublished rows whose last attempt RabbitMQ could not route (no queue
    bound), ready for a retry or failed; they are also in ``ready`` / ``failed``.
    """

    taken_at: datetime
    ready: int
    failed: int
    published: int
    published_is_estimate: bool
    stuck: int
    stuck_after_seconds: int
    oldest_ready_age_seconds: float | None
    last_published_at: datetime | None
    published_last_minute: int
    published_per_second: float
    unroutable: int = 0
    latest_error: LatestError | None = None
    # Local jobs (durable after-commit handlers): waiting or retrying, and failed for good.
    jobs_ready: int = 0
    jobs_failed: int = 0

    @property
    def relay_active(self) -> bool:
        """True when some relay published a message within the last minute."""
        return self.published_last_minute > 0

    @property
    def backlog_stale(self) -> bool:
        """True when the oldest ready row has waited longer than the stuck threshold."""
        age = self.oldest_ready_age_seconds
        return age is not None and age > self.stuck_after_seconds

    def as_json(self) -> dict[str, Any]:
        """The summary as JSON-ready values (datetimes as ISO 8601 strings)."""
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, datetime):
                data[key] = value.isoformat()
        data["relay_active"] = self.relay_active
        data["backlog_stale"] = self.backlog_stale
        return data


def stuck_after() -> timedelta:
    """How long a row may stay ready before it counts as stuck (``OUTBOX["STUCK_AFTER"]``)."""
    return timedelta(seconds=conf.get_int("STUCK_AFTER"))


def stuck_condition(now: datetime | None = None) -> Q:
    """Rows that need an operator: failed, or ready since before the stuck threshold.

    A ready row's age runs from ``created_at``, not ``next_attempt_at``: while the broker is
    down the relay keeps moving ``next_attempt_at`` into the future, and such a row is exactly
    the one an operator must see. Without ``now`` the age is measured on the database's
    clock, the one ``created_at`` was written with.
    """
    current: datetime | Now = Now() if now is None else now
    # The redundant "not published" lets PostgreSQL use the relay's partial index on
    # unpublished rows instead of scanning a table full of published ones.
    unpublished = ~Q(status=OutboxMessage.Status.PUBLISHED)
    return unpublished & (
        Q(status=OutboxMessage.Status.FAILED)
        | Q(status=OutboxMessage.Status.READY, created_at__lt=current - stuck_after())
    )


class Backlog(NamedTuple):
    """What waits: ready rows, failed rows, and the oldest ready row's age (None if none)."""

    ready: int
    failed: int
    oldest_ready_age_seconds: float | None


def backlog(using: str | None = None) -> Backlog:
    """Count the unpublished rows and age the oldest ready one.

    Cheap enough to run on every Prometheus scrape: one aggregate over the unpublished rows,
    which the relay's partial index covers.
    """
    now = database_now(_alias(using))
    row = (
        _messages(using)
        .exclude(status=OutboxMessage.Status.PUBLISHED)
        .order_by()
        .aggregate(
            ready=Count("id", filter=Q(status=OutboxMessage.Status.READY)),
            failed=Count("id", filter=Q(status=OutboxMessage.Status.FAILED)),
            oldest=Min("created_at", filter=Q(status=OutboxMessage.Status.READY)),
        )
    )
    return Backlog(row["ready"], row["failed"], _age_seconds(now, row["oldest"]))


class JobBacklog(NamedTuple):
    """Local jobs that wait (or wait for a retry), and jobs that failed for good."""

    ready: int
    failed: int


def job_backlog(using: str | None = None) -> JobBacklog:
    """Count the local jobs by status. Done jobs are deleted, so the table is small."""
    row = (
        OutboxJob.objects.using(_alias(using))
        .order_by()
        .aggregate(
            ready=Count("id", filter=Q(status=OutboxJob.Status.READY)),
            failed=Count("id", filter=Q(status=OutboxJob.Status.FAILED)),
        )
    )
    return JobBacklog(row["ready"], row["failed"])


def summary(using: str | None = None) -> OutboxSummary:
    """Read every operational figure of the outbox at once.

    Ages and windows are measured on the database's clock, which wrote the timestamps: an
    application server whose clock is off does not make a backlog look fresh or stale."""
    now = database_now(_alias(using))
    messages = _messages(using)
    unpublished = (
        messages.exclude(status=OutboxMessage.Status.PUBLISHED)
        .order_by()
        .aggregate(
            ready=Count("id", filter=Q(status=OutboxMessage.Status.READY)),
            failed=Count("id", filter=Q(status=OutboxMessage.Status.FAILED)),
            stuck=Count("id", filter=stuck_condition(now)),
            oldest_ready=Min("created_at", filter=Q(status=OutboxMessage.Status.READY)),
            unroutable=Count("id", filter=Q(last_error__startswith=UNROUTABLE_ERROR_PREFIX)),
        )
    )
    published = messages.filter(status=OutboxMessage.Status.PUBLISHED)
    recent = published.filter(published_at__gte=now - THROUGHPUT_WINDOW).aggregate(
        last_minute=Count("id", filter=Q(published_at__gte=now - RELAY_ACTIVITY_WINDOW)),
        window=Count("id"),
    )
    last_published_at: datetime | None = published.aggregate(last=Max("published_at"))["last"]
    published_count, is_estimate = _published_count(
        published, using, unpublished=unpublished["ready"] + unpublished["failed"]
    )
    jobs = job_backlog(using)
    return OutboxSummary(
        taken_at=now,
        ready=unpublished["ready"],
        failed=unpublished["failed"],
        published=published_count,
        published_is_estimate=is_estimate,
        stuck=unpublished["stuck"],
        stuck_after_seconds=conf.get_int("STUCK_AFTER"),
        oldest_ready_age_seconds=_age_seconds(now, unpublished["oldest_ready"]),
        last_published_at=last_published_at,
        published_last_minute=recent["last_minute"],
        published_per_second=recent["window"] / THROUGHPUT_WINDOW.total_seconds(),
        unroutable=unpublished["unroutable"],
        latest_error=_latest_error(messages),
        jobs_ready=jobs.ready,
        jobs_failed=jobs.failed,
    )


def estimated_table_rows(using: str | None = None) -> int:
    """PostgreSQL's estimate of the outbox table's row count (from the last ANALYZE)."""
    alias = using or router.db_for_read(OutboxMessage)
    with connections[alias].cursor() as cursor:
        cursor.execute(_ESTIMATED_ROWS_SQL, [OutboxMessage._meta.db_table])
        estimate: int = cursor.fetchone()[0]
    # -1 means "never analyzed" (PostgreSQL 14+).
    return max(0, estimate)


def _alias(using: str | None) -> str:
    return using or router.db_for_read(OutboxMessage)


def _latest_error(messages: QuerySet[OutboxMessage]) -> LatestError | None:
    # The relay sets next_attempt_at to "now + back-off" with each error, so the latest one
    # is, to within a back-off, the most recent error. Filtering on "not published" keeps the
    # query on the partial index of unpublished rows, however many published rows are kept.
    row = (
        messages.exclude(status=OutboxMessage.Status.PUBLISHED)
        .exclude(last_error="")
        .order_by("-next_attempt_at", "-id")
        .only(
            "message_id",
            "status",
            "event_type",
            "exchange",
            "routing_key",
            "attempts",
            "last_error",
        )
        .first()
    )
    if row is None:
        return None
    return LatestError(
        message_id=str(row.message_id),
        status=row.status,
        event_type=row.event_type,
        exchange=row.exchange,
        routing_key=row.routing_key,
        attempts=row.attempts,
        error=row.last_error,
    )


def _messages(using: str | None) -> QuerySet[OutboxMessage]:
    return OutboxMessage.objects.using(_alias(using))


def _age_seconds(now: datetime, since: datetime | None) -> float | None:
    return None if since is None else max(0.0, (now - since).total_seconds())


def _published_count(
    published: QuerySet[OutboxMessage], using: str | None, *, unpublished: int
) -> tuple[int, bool]:
    # An exact count(*) of millions of kept rows would take seconds on every admin page
    # load; the planner's estimate is what large Django admin installs show as well.
    estimated_rows = estimated_table_rows(using)
    if estimated_rows < EXACT_COUNT_LIMIT:
        return published.count(), False
    return max(0, estimated_rows - unpublished), True
