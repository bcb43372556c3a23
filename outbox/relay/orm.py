"""The ORM store: the same rules as the named queries, for a single relay on a database
without SKIP LOCKED (SQLite in development).

Rows are ordered by ``id``: no trigger assigns ``position`` there, and SQLite serializes
writers, so id order is commit order. Every write re-checks the row's state in its WHERE
clause, so a row that changed since it was read is left alone rather than overwritten.
Reads happen before the transaction that writes: a SQLite transaction that reads first and
writes second can fail to upgrade its lock while the application is writing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q, QuerySet, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from outbox.common.jsontext import encode
from outbox.models import OutboxMessage
from outbox.relay.store import (
    ClaimedMessage,
    RetryPolicy,
    RetryResult,
    max_per_key_setting,
    refuse_inside_atomic,
)

__all__ = ["ORMStore"]

_READY = OutboxMessage.Status.READY


class ORMStore:
    """The relay's operations written with the ORM, each in its own short transaction.

    ``max_per_key`` as for ``PostgreSQLStore``. Keys are served oldest head first rather than
    in turns: with one relay and a development backlog, fairness is not worth a cursor.
    """

    def __init__(self, alias: str, *, retry: RetryPolicy, max_per_key: int | None = None) -> None:
        self.alias = alias
        self.retry = retry
        self.max_per_key = max_per_key_setting(max_per_key)

    def claim(self, *, owner: str, limit: int, lease_seconds: float) -> list[ClaimedMessage]:
        rows = self._rows()
        now = timezone.now()
        unleased = Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)
        older_unpublished = rows.filter(
            ordering_key=OuterRef("ordering_key"), id__lt=OuterRef("id")
        ).exclude(status=OutboxMessage.Status.PUBLISHED)
        heads = list(
            rows.filter(unleased, status=_READY, next_attempt_at__lte=now)
            .filter(Q(ordering_key="") | ~Exists(older_unpublished))
            .order_by("id")
            .values_list("id", "ordering_key")[:limit]
        )
        ids = self._with_runs(heads, limit, now)
        if not ids:
            return []
        expires = now + timedelta(seconds=lease_seconds)
        with transaction.atomic(using=self.alias):
            rows.filter(unleased, id__in=ids, status=_READY).update(
                lease_owner=owner, lease_expires_at=expires
            )
            leased = list(
                rows.filter(id__in=ids, lease_owner=owner, lease_expires_at=expires).order_by("id")
            )
        return [
            ClaimedMessage(
                id=row.id,
                message_id=row.message_id,
                event_type=row.event_type,
                routing_key=row.routing_key,
                exchange=row.exchange,
                aggregate_type=row.aggregate_type,
                aggregate_id=row.aggregate_id,
                payload_json=encode(row.payload),
                headers=dict(row.headers),
                created_at=row.created_at,
                # No trigger assigns positions here; id order is commit order.
                position=row.id,
                attempts=row.attempts,
            )
            for row in leased
        ]

    def _with_runs(self, heads: list[tuple[int, str]], limit: int, now: datetime) -> list[int]:
        """``heads`` (id, ordering key; id order) with each keyed head followed by the rest of
        its run: the key's next unpublished rows in id order while they are ready, due and
        unleased, ``max_per_key`` rows at most; ``limit`` rows in all, every head among them
        and the spare places going to the oldest heads' runs first."""
        # Every head has its place in the batch, so no run can be longer than its head plus
        # the places the heads leave: that also bounds the rows read here.
        per_key = min(self.max_per_key or limit, limit - len(heads) + 1)
        keys = {key for _, key in heads if key}
        runs: dict[str, list[int]] = {}
        if per_key > 1 and keys:
            ended: set[str] = set()
            leading = (
                self._rows()
                .filter(ordering_key__in=keys)
                .exclude(status=OutboxMessage.Status.PUBLISHED)
                .annotate(
                    rank=Window(RowNumber(), partition_by=F("ordering_key"), order_by=F("id").asc())
                )
                .filter(rank__lte=per_key)
                .order_by("ordering_key", "id")
                .values_list("ordering_key", "id", "status", "next_attempt_at", "lease_expires_at")
            )
            for key, row_id, status, due, lease in leading:
                if key in ended:
                    continue
                if status == _READY and due <= now and (lease is None or lease < now):
                    runs.setdefault(key, []).append(row_id)
                else:
                    ended.add(key)
        chosen: list[int] = []
        spare = limit - len(heads)  # places left once every head has its own
        for head, key in heads:
            run = runs.get(key, [])
            # The head read first must still open its run; otherwise it goes alone.
            behind = run[1 : 1 + spare] if run[:1] == [head] else []
            spare -= len(behind)
            chosen.extend([head, *behind])
        return chosen

    def mark_published(self, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        rows = self._rows()  # checked before the transaction opens
        with transaction.atomic(using=self.alias):
            return _publishable(rows, ids).update(**_published())

    def mark_published_unroutable(self, errors: Mapping[int, str]) -> int:
        if not errors:
            return 0
        rows = self._rows()
        # One UPDATE per distinct reason: a batch dropped together usually shares one.
        by_error: dict[str, list[int]] = {}
        for key, error in errors.items():
            by_error.setdefault(error, []).append(key)
        with transaction.atomic(using=self.alias):
            return sum(
                _publishable(rows, ids).update(**_published(), last_error=error)
                for error, ids in by_error.items()
            )

    def schedule_retry(self, errors: Mapping[int, str], *, owner: str) -> RetryResult:
        if not errors:
            return RetryResult([], [])
        rows = self._rows()
        policy = self.retry
        # Only the lease holder counts the attempt (see the schedule_retry query).
        held = dict(
            rows.filter(id__in=list(errors), status=_READY, lease_owner=owner).values_list(
                "id", "attempts"
            )
        )
        now = timezone.now()
        retried: list[int] = []
        failed: list[int] = []
        with transaction.atomic(using=self.alias):
            for key, attempts in held.items():
                status = (
                    _READY if attempts + 1 < policy.max_attempts else OutboxMessage.Status.FAILED
                )
                delay = policy.delay_after(attempts + 1)
                updated = rows.filter(
                    id=key, status=_READY, lease_owner=owner, attempts=attempts
                ).update(
                    attempts=attempts + 1,
                    last_error=errors[key],
                    status=status,
                    next_attempt_at=now + timedelta(seconds=delay),
                    lease_owner="",
                    lease_expires_at=None,
                )
                if updated:
                    (retried if status == _READY else failed).append(key)
        return RetryResult(sorted(retried), sorted(failed))

    def release(self, ids: Sequence[int], *, owner: str) -> int:
        if not ids:
            return 0
        rows = self._rows()
        with transaction.atomic(using=self.alias):
            return rows.filter(id__in=list(ids), status=_READY, lease_owner=owner).update(
                lease_owner="", lease_expires_at=None
            )

    def _rows(self) -> QuerySet[OutboxMessage]:
        refuse_inside_atomic(self.alias)
        return OutboxMessage.objects.using(self.alias)


def _publishable(rows: QuerySet[OutboxMessage], ids: Sequence[int]) -> QuerySet[OutboxMessage]:
    # Whoever holds the lease now: the broker confirmed it, the fact is recorded once.
    return rows.filter(id__in=list(ids), status=_READY)


def _published() -> dict[str, Any]:
    return {
        "status": OutboxMessage.Status.PUBLISHED,
        "published_at": timezone.now(),
        "lease_owner": "",
        "lease_expires_at": None,
    }
