"""The inbox: which messages each consumer has processed, so a redelivery is skipped.

The record is written in the same transaction as the handler's effects and *before* the
handler runs. A unique (consumer, message_id) key makes a concurrent duplicate in another
process wait on that row until the first transaction ends: it then sees the committed row and
skips, or, if the first rolled back, records the message and runs the handler itself.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar
from uuid import UUID

from django.db import connections, router, transaction
from django.utils import timezone

from outbox import conf
from outbox.common.database import fetch_prepared
from outbox.exceptions import InvalidMessageError, TransactionRequiredError
from outbox.models import InboxMessage
from outbox.operations.vacuum import vacuum_after_purge

logger = logging.getLogger("outbox.consumer.inbox")

P = ParamSpec("P")
R = TypeVar("R")

# ON CONFLICT DO NOTHING rather than catching IntegrityError: a failed INSERT would abort the
# surrounding PostgreSQL transaction, and the duplicate case is the normal path here, not an
# error. RETURNING tells the two cases apart in one round trip.
CLAIM_QUERY = """
INSERT INTO outbox_inbox (consumer, message_id, event_type, processed_at)
VALUES (%s, %s, %s, %s)
ON CONFLICT (consumer, message_id) DO NOTHING
RETURNING id
"""

RESULT_QUERY = "SELECT result FROM outbox_inbox WHERE consumer = %s AND message_id = %s"
STORE_RESULT_QUERY = "UPDATE outbox_inbox SET result = %s WHERE id = %s"

_MAX_KEY_LENGTH = 255

#: The consumer's batch claim: one statement records a whole batch. The ids and event types
#: travel as two JSON arrays, so the statement's text and its four parameters are the same
#: for every batch (the driver converts it once, not one placeholder per message). JSON rather
#: than PostgreSQL arrays because the driver quotes an array element by element in Python
#: (about 4 µs of CPU per message, on the batch's critical path), while ``json.dumps`` and the
#: quoting of one string run in C. Rows are inserted in message id order, so two consumer
#: processes claiming overlapping batches take the unique key's locks in the same order and
#: wait for each other instead of deadlocking.
_CLAIM_BATCH_QUERY = """
INSERT INTO outbox_inbox (consumer, message_id, event_type, processed_at)
SELECT %s, claimed.message_id, claimed.event_type, %s
FROM ROWS FROM (json_array_elements_text(%s::json), json_array_elements_text(%s::json))
    WITH ORDINALITY AS claimed (message_id, event_type, number)
ORDER BY claimed.number
ON CONFLICT (consumer, message_id) DO NOTHING
RETURNING message_id
"""
UNCLAIM_QUERY = "DELETE FROM outbox_inbox WHERE consumer = %s AND message_id = %s"


def claim(
    consumer: str, message_id: str | UUID, *, event_type: str = "", using: str | None = None
) -> bool:
    """Record that ``consumer`` processes ``message_id``, in the current transaction.

    Returns True the first time, False when the message is already recorded (a duplicate:
    skip it). Must run inside ``transaction.atomic``: the record has to commit or roll back
    together with what the handler does. If another transaction recorded the same message and
    has not finished yet, this waits for it.
    """
    return _claim_record(consumer, message_id, event_type=event_type, using=using) is not None


def _claim_record(
    consumer: str, message_id: str | UUID, *, event_type: str = "", using: str | None = None
) -> int | None:
    """``claim()``, returning the new record's id, or None for a duplicate."""
    key = _message_key(message_id)
    _check_name("consumer", consumer)
    alias = using or router.db_for_write(InboxMessage)
    connection = transaction.get_connection(alias)
    if not connection.in_atomic_block:
        raise TransactionRequiredError(
            "inbox.claim() must run inside transaction.atomic(), in the transaction that does"
            f" the processing (database {alias!r}); use idempotent() to get one"
        )
    with connections[alias].cursor() as cursor:
        cursor.execute(CLAIM_QUERY, [consumer, key, event_type[:_MAX_KEY_LENGTH], timezone.now()])
        row = cursor.fetchone()
    return None if row is None else int(row[0])


def claim_batch(consumer: str, messages: Sequence[tuple[str, str]], *, using: str) -> set[str]:
    """Record ``messages`` ((message id, event type) pairs with distinct ids) for ``consumer``
    in the current transaction, in one statement; return the ids recorded now (the others are
    duplicates). The consume loop's step; ``unclaim`` undoes one record whose handler failed.

    The statement is a server-side prepared statement of the connection, parsed and planned
    once instead of once per batch, unless ``OUTBOX["PREPARED_INSERT"]`` is off (a pooler
    that cannot keep prepared statements); it does not appear in Django's query log.
    """
    if not messages:
        return set()
    ordered = sorted(messages)
    # Not ASCII-escaped: the characters travel as they are (the database decodes no \u escapes).
    message_ids = json.dumps([message_id for message_id, _ in ordered], ensure_ascii=False)
    event_types = json.dumps(
        [event_type[:_MAX_KEY_LENGTH] for _, event_type in ordered], ensure_ascii=False
    )
    parameters: tuple[str, datetime, str, str] = (
        consumer,
        timezone.now(),
        message_ids,
        event_types,
    )
    if conf.get_bool("PREPARED_INSERT"):
        rows = fetch_prepared(using, _CLAIM_BATCH_QUERY, parameters).rows
    else:
        with connections[using].cursor() as cursor:
            cursor.execute(_CLAIM_BATCH_QUERY, parameters)
            rows = cursor.fetchall()
    return {row[0] for row in rows}


def unclaim(consumer: str, message_id: str, *, using: str) -> None:
    """Remove the record ``claim_batch`` wrote for ``message_id`` in the current transaction
    (its handler failed and was rolled back to its savepoint), so that its retry runs."""
    with connections[using].cursor() as cursor:
        cursor.execute(UNCLAIM_QUERY, [consumer, message_id])


def idempotent(
    consumer: str, *, message_id_argument: str = "message_id", using: str | None = None
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a function so it runs at most once per message id for ``consumer``.

    The decorated function runs inside ``transaction.atomic`` after its message id, read from
    the argument named ``message_id_argument``, is recorded in the inbox. Its return value is
    stored with the record, so a call with an id already recorded returns the first run's
    result without running it: a retried request gets the same answer. An exception rolls
    back the record with everything else, so a retry runs it again. Made for code that
    receives messages by other means than ``outbox_consume``, e.g. a Celery task::

        @shared_task
        @idempotent("billing")
        def charge(message_id: str, order_id: int) -> dict[str, str]: ...

    The result must be plain JSON data (``None``, ``bool``, ``int``, finite ``float``,
    ``str``, and lists and str-keyed dicts of these), which comes back equal: anything else
    (a tuple, ``Decimal``, ``datetime``, a model instance) raises ``TypeError`` naming the
    value's path, and the whole run rolls back, its inbox record included.
    """
    _check_name("consumer", consumer)

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(func)
        if message_id_argument not in signature.parameters:
            raise TypeError(
                f"@idempotent: {func.__qualname__} has no argument {message_id_argument!r}"
                " to read the message id from"
            )

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            bound = signature.bind(*args, **kwargs)
            message_id = bound.arguments[message_id_argument]
            alias = using or router.db_for_write(InboxMessage)
            with transaction.atomic(using=alias):
                record_id = _claim_record(consumer, message_id, using=alias)
                if record_id is None:
                    logger.info("%s: message %s already processed, skipped", consumer, message_id)
                    stored: R = _stored_result(consumer, _message_key(message_id), alias)
                    return stored
                result = func(*args, **kwargs)
                # None is stored as "" (the column default), which costs no write: a task
                # that returns nothing stays one statement.
                if result is not None:
                    text = result_json(result, f"@idempotent {func.__qualname__}() returned")
                    with connections[alias].cursor() as cursor:
                        cursor.execute(STORE_RESULT_QUERY, [text, record_id])
                return result

        return wrapper

    return decorate


def result_json(value: Any, what: str) -> str:
    """``value`` as JSON text that reads back equal, or ``TypeError`` naming what is not.

    Stricter than payload encoding on purpose: a ``Decimal`` or ``datetime`` would come back
    as a string and a tuple as a list, so a duplicate call would get a different answer than
    the first.
    """
    _check_plain_json(value, "result", what)
    # ASCII escapes keep NUL characters and lone surrogates storable in a text column.
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


def _check_plain_json(value: Any, path: str, what: str) -> None:
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{what} {path} = {value!r}, which JSON cannot hold")
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_plain_json(item, f"{path}[{index}]", what)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{what} {path} with the key {key!r}; JSON keys are strings")
            _check_plain_json(item, f"{path}[{key!r}]", what)
        return
    hint = " (it would come back as a list)" if isinstance(value, tuple) else ""
    raise TypeError(
        f"{what} {path} of type {type(value).__name__}{hint}; a stored result must be None,"
        " bool, int, float, str, or lists and str-keyed dicts of these"
    )


def _stored_result(consumer: str, message_id: str, alias: str) -> Any:
    with connections[alias].cursor() as cursor:
        cursor.execute(RESULT_QUERY, [consumer, message_id])
        row = cursor.fetchone()
    # No text: the first run returned None, or the record was written by claim() alone.
    return json.loads(row[0]) if row is not None and row[0] else None


def purge_inbox(
    *, older_than: timedelta | None = None, batch_size: int | None = None, using: str | None = None
) -> int:
    """Delete inbox records processed longer ago than ``older_than`` and return how many.

    ``older_than`` defaults to ``OUTBOX["INBOX_RETENTION"]`` and ``batch_size`` to
    ``OUTBOX["INBOX_PURGE_BATCH_SIZE"]``. Each batch is its own short transaction, oldest
    first, so the purge never holds many locks or one long transaction, and can be stopped
    at any point. A message redelivered after its record is purged is processed again.
    """
    if older_than is None:
        older_than = conf.inbox_retention()
    if batch_size is None:
        batch_size = conf.get_int("INBOX_PURGE_BATCH_SIZE")
    if older_than < timedelta(0):
        raise ValueError(f"older_than must not be negative, got {older_than}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    alias = using or router.db_for_write(InboxMessage)
    cutoff = timezone.now() - older_than
    deleted = 0
    while True:
        with transaction.atomic(using=alias):
            batch = (
                InboxMessage.objects.using(alias)
                .filter(processed_at__lt=cutoff)
                .order_by("processed_at")
                .values("pk")[:batch_size]
            )
            count, _ = InboxMessage.objects.using(alias).filter(pk__in=batch).delete()
        deleted += count
        if count < batch_size:
            break
    vacuum_after_purge(InboxMessage, alias, deleted)
    return deleted


def _message_key(message_id: object) -> str:
    if isinstance(message_id, UUID):
        return str(message_id)
    _check_name("message_id", message_id)
    assert isinstance(message_id, str)
    return message_id


def _check_name(name: str, value: object) -> None:
    if not isinstance(value, str) or not value or len(value) > _MAX_KEY_LENGTH:
        raise InvalidMessageError(
            f"{name} must be a non-empty string of at most {_MAX_KEY_LENGTH} characters,"
            f" got {value!r}"
        )
