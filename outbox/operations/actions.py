"""What an operator can do to outbox rows: retry now, mark failed, replay, purge.

The admin actions and ``outbox_replay`` both call these functions. Each works through the
chosen rows in batches ordered by id, one short transaction per batch, and only touches rows
whose status allows the operation at that moment: rows are locked with ``SKIP LOCKED`` and
re-checked, so a row a relay is publishing right now is left alone rather than raced.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from datetime import timedelta
from typing import TypeAlias, TypeVar

from django.db import router, transaction
from django.db.models import Case, F, Model, QuerySet, TextField, Value, When
from django.db.models.functions import Concat, Now

from outbox import conf
from outbox.common.database import database_now
from outbox.models import OutboxJob, OutboxMessage
from outbox.operations.vacuum import vacuum_after_purge

__all__ = [
    "REPLAY_OF_HEADER",
    "mark_failed",
    "purge_published",
    "replay",
    "retry_jobs",
    "retry_now",
]

logger = logging.getLogger("outbox.operations")

# Header a replay with new message ids puts on each copy: the original row's message_id.
REPLAY_OF_HEADER = "x-replay-of"
DEFAULT_BATCH_SIZE = 500

Status = OutboxMessage.Status
# Called inside each batch's transaction with the ids of the rows just changed, so that an
# audit entry (the admin log) commits or rolls back together with the change.
BatchCallback: TypeAlias = Callable[[list[int]], None]
# Outbox rows or local jobs: both are worked through in the same locked batches.
RowT = TypeVar("RowT", bound=Model)


def retry_now(
    messages: QuerySet[OutboxMessage],
    *,
    on_batch: BatchCallback | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> int:
    """Put failed and waiting rows back to ready, due now, with their attempts reset to 0.

    Attempts are reset because an operator retries after fixing the cause: the row gets the
    relay's whole retry budget and its shortest back-off again, instead of one last attempt
    at the longest delay. ``last_error`` is kept until the next attempt replaces it.
    Published rows are skipped (replay them instead). Returns the number of rows changed.
    """

    def apply(ids: list[int]) -> None:
        # Now(): the database's clock, the one the relay's claim compares with.
        _rows(messages, ids).update(status=Status.READY, attempts=0, next_attempt_at=Now())

    changed = _in_batches(messages, {Status.READY, Status.FAILED}, apply, on_batch, batch_size)
    _log("retry_now", changed)
    return changed


def retry_jobs(
    jobs: QuerySet[OutboxJob],
    *,
    on_batch: BatchCallback | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> int:
    """Put failed and waiting local jobs back to ready, due now, with their runs reset to 0
    (after fixing the cause, a job gets its whole retry budget again). ``last_error`` is kept
    until the next run replaces it. A job being run right now is left alone. Returns the
    number of jobs changed."""

    def apply(ids: list[int]) -> None:
        _rows(jobs, ids).update(
            status=OutboxJob.Status.READY,
            attempts=0,
            next_attempt_at=Now(),
            lease_owner="",
            lease_expires_at=None,
        )

    statuses = {OutboxJob.Status.READY, OutboxJob.Status.FAILED}
    changed = _in_batches(jobs, statuses, apply, on_batch, batch_size)
    _log("retry_jobs", changed)
    return changed


def mark_failed(
    messages: QuerySet[OutboxMessage],
    *,
    actor: str,
    on_batch: BatchCallback | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> int:
    """Stop retrying ready rows: mark them failed, noting ``actor`` in ``last_error``.

    The previous error stays in ``last_error`` after the note. Only ready rows change.
    Returns the number of rows changed.
    """
    note = f"marked failed by {actor}"

    def apply(ids: list[int]) -> None:
        _rows(messages, ids).update(
            status=Status.FAILED,
            last_error=Case(
                When(last_error="", then=Value(note)),
                default=Concat(Value(f"{note}; previous error: "), F("last_error")),
                output_field=TextField(),
            ),
        )

    changed = _in_batches(messages, {Status.READY}, apply, on_batch, batch_size)
    _log("mark_failed", changed, actor=actor)
    return changed


def replay(
    messages: QuerySet[OutboxMessage],
    *,
    new_ids: bool = False,
    on_batch: BatchCallback | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> int:
    """Have the relay publish published (or failed) rows again; ready rows are skipped.

    By default each row goes back to ready with its original ``message_id``: consumers with
    an inbox skip what they already processed, so only those that missed it act on it. With
    ``new_ids=True`` the rows stay as they are and copies are inserted with new message ids
    and an ``x-replay-of`` header naming the original, so every consumer processes them
    again; copies keep the originals' relative order. Returns the number of rows replayed.
    """

    def put_back(ids: list[int]) -> None:
        _rows(messages, ids).update(
            status=Status.READY, attempts=0, next_attempt_at=Now(), published_at=None
        )

    def insert_copies(ids: list[int]) -> None:
        originals = _rows(messages, ids).order_by("pk")
        OutboxMessage.objects.using(originals.db).bulk_create(
            [_copy(original) for original in originals]
        )

    apply = insert_copies if new_ids else put_back
    changed = _in_batches(messages, {Status.PUBLISHED, Status.FAILED}, apply, on_batch, batch_size)
    _log("replay", changed, new_ids=new_ids)
    return changed


def _log(operation: str, count: int, **details: object) -> None:
    # One line per operation with its fields both in the text (plain log files) and as
    # ``extra`` attributes (JSON formatters pick them up).
    fields = {"operation": operation, "count": count, **details}
    text = " ".join(f"{key}={value}" for key, value in fields.items())
    logger.info("outbox %s", text, extra={f"outbox_{key}": value for key, value in fields.items()})


def _copy(original: OutboxMessage) -> OutboxMessage:
    return OutboxMessage(
        event_type=original.event_type,
        routing_key=original.routing_key,
        exchange=original.exchange,
        aggregate_type=original.aggregate_type,
        aggregate_id=original.aggregate_id,
        ordering_key=original.ordering_key,
        payload=original.payload,
        headers={**original.headers, REPLAY_OF_HEADER: str(original.message_id)},
    )


def _rows(messages: QuerySet[RowT], ids: list[int]) -> QuerySet[RowT]:
    return messages.model._default_manager.using(messages.db).filter(pk__in=ids)


def _in_batches(
    messages: QuerySet[RowT],
    statuses: Collection[str],
    apply: Callable[[list[int]], None],
    on_batch: BatchCallback | None,
    batch_size: int,
) -> int:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    alias = messages.db or router.db_for_write(messages.model)
    # Keyset pagination on the id: rows a batch changes may still match the selection
    # (retry-now leaves ready rows ready), so "the next batch" is "ids after the last one".
    # The selection as a subquery: whatever the caller's queryset carries (ordering,
    # DISTINCT from an admin search) cannot clash with FOR UPDATE on the outer query.
    selected = messages.model._default_manager.using(alias).filter(
        pk__in=messages.order_by().values("pk"), status__in=statuses
    )
    last_id = 0
    changed = 0
    while True:
        with transaction.atomic(using=alias):
            ids = list(
                selected.filter(pk__gt=last_id)
                .order_by("pk")
                .select_for_update(skip_locked=True)
                .values_list("pk", flat=True)[:batch_size]
            )
            if not ids:
                return changed
            apply(ids)
            if on_batch is not None:
                on_batch(ids)
        last_id = ids[-1]
        changed += len(ids)


def purge_published(
    *,
    older_than: timedelta | None = None,
    batch_size: int | None = None,
    max_batches: int | None = None,
    using: str | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Delete published rows published more than ``older_than`` ago; return how many.

    Defaults: ``OUTBOX["RETENTION"]`` and ``OUTBOX["PURGE_BATCH_SIZE"]``. Each batch is one
    short DELETE of the oldest rows, so the relay and writers never wait behind a long
    transaction; then, on PostgreSQL, ``VACUUM (ANALYZE)`` makes the space reusable
    (``OUTBOX["PURGE_VACUUM"]``, ``outbox.operations.vacuum``). Ready and failed rows are never
    deleted, whatever their age. ``max_batches`` bounds one run (a scheduled task then
    finishes the rest next time); ``on_batch`` gets the size of each deleted batch.
    """
    retention = (
        older_than if older_than is not None else timedelta(seconds=conf.get_float("RETENTION"))
    )
    size = batch_size if batch_size is not None else conf.get_int("PURGE_BATCH_SIZE")
    if size < 1:
        raise ValueError(f"batch_size must be at least 1, got {size}")
    if retention < timedelta(0):
        raise ValueError(f"older_than must not be negative, got {retention}")
    alias = using or router.db_for_write(OutboxMessage)
    # published_at was written by the database's clock; the cutoff is measured on it too.
    cutoff = database_now(alias) - retention
    # The status test is repeated on the outer DELETE: PostgreSQL re-checks it against a
    # row replayed back to ready between the subquery and the delete, and keeps that row.
    expired = OutboxMessage.objects.using(alias).filter(
        status=Status.PUBLISHED, published_at__lt=cutoff
    )
    deleted_total = 0
    batches = 0
    while max_batches is None or batches < max_batches:
        oldest = expired.order_by("published_at").values("pk")[:size]
        deleted, _ = expired.filter(pk__in=oldest).delete()
        batches += 1
        deleted_total += deleted
        if on_batch is not None and deleted:
            on_batch(deleted)
        if deleted < size:
            break
    vacuumed = vacuum_after_purge(OutboxMessage, alias, deleted_total)
    _log("purge", deleted_total, batches=batches, cutoff=cutoff.isoformat(), vacuum=vacuumed)
    return deleted_total
