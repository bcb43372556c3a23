"""A batch's transaction without the broker (``processing.process_batch``): what commits when
handlers succeed, raise, or catch a database error in a savepoint of their own, in the fast
run without savepoints and in the run again with one savepoint per message."""

from __future__ import annotations

import uuid

import pytest
from django.db import DatabaseError, connection, transaction

from outbox.consumer.processing import process_batch
from outbox.consumer.registry import ConsumerSpec, IncomingMessage, Registration
from outbox.models import InboxMessage
from tests.testapp.models import LogLine

pytestmark = pytest.mark.django_db(transaction=True)

CONSUMER = "savepoints"

#: Each handler call, by message id, in order: shows which runs happened.
calls: list[str] = []


def handle(message: IncomingMessage) -> None:
    """Writes a LogLine with the message id, then does what the payload says."""
    calls.append(message.message_id)
    LogLine.objects.create(text=message.message_id)
    behaviour = message.payload["do"]
    if behaviour == "swallow":
        # The way the docs recommend: the statement that may fail in its own atomic block,
        # which is a savepoint, so the error leaves the batch's transaction usable.
        try:
            with transaction.atomic():
                LogLine.objects.create(text=f"{message.message_id} lost")
                with connection.cursor() as cursor:
                    cursor.execute("SELECT 1/0")
        except DatabaseError:
            pass
        LogLine.objects.create(text=f"{message.message_id} after")
    elif behaviour == "raise":
        raise RuntimeError("handler failed on purpose")
    elif behaviour == "raise on the second run" and calls.count(message.message_id) == 2:
        raise RuntimeError("handler failed on its second run")


SPEC = ConsumerSpec(CONSUMER, (Registration("test.#", handle),))


@pytest.fixture(autouse=True)
def _no_calls() -> None:
    calls.clear()


def messages(*behaviours: str) -> list[IncomingMessage]:
    return [
        IncomingMessage(
            consumer=CONSUMER,
            message_id=f"{behaviour} {uuid.uuid4()}",
            event_type="test.happened",
            payload={"do": behaviour},
        )
        for behaviour in behaviours
    ]


def committed_lines() -> list[str]:
    return sorted(LogLine.objects.values_list("text", flat=True))


def recorded() -> set[str]:
    return set(InboxMessage.objects.filter(consumer=CONSUMER).values_list("message_id", flat=True))


def test_a_handler_that_catches_a_database_error_in_its_own_savepoint_commits_with_the_batch() -> (
    None
):
    batch = messages("ok", "swallow", "ok")
    first, swallowing, last = (message.message_id for message in batch)

    outcomes = process_batch(SPEC, batch)

    assert [outcome.kind for outcome in outcomes] == ["processed"] * 3
    assert calls == [first, swallowing, last]  # one run: no failure, no run again
    # Its own savepoint took the write before the error along, nothing else.
    assert committed_lines() == sorted([first, swallowing, f"{swallowing} after", last])
    assert recorded() == {first, swallowing, last}


def test_failures_in_the_middle_of_a_batch_roll_back_only_their_own_savepoints() -> None:
    batch = messages("ok", "swallow", "raise on the second run", "raise", "ok")
    first, swallowing, failing_later, failing, last = (message.message_id for message in batch)

    outcomes = process_batch(SPEC, batch)

    assert [outcome.kind for outcome in outcomes] == [
        "processed",
        "processed",
        "failed",
        "failed",
        "processed",
    ]
    assert outcomes[2].error_message == "handler failed on its second run"
    assert outcomes[3].error_message == "handler failed on purpose"
    # The first run ends at the first failure and is rolled back; the second runs the rest,
    # a savepoint each, without the message that failed: one more fails in it, alone.
    assert calls == [
        first,
        swallowing,
        failing_later,
        failing,
        first,
        swallowing,
        failing_later,
        last,
    ]
    # Committed once each, the failed messages' writes and inbox records rolled back.
    assert committed_lines() == sorted([first, swallowing, f"{swallowing} after", last])
    assert recorded() == {first, swallowing, last}


def test_a_batch_whose_handlers_all_fail_commits_nothing() -> None:
    batch = messages("raise", "raise")

    outcomes = process_batch(SPEC, batch)

    assert [outcome.kind for outcome in outcomes] == ["failed", "failed"]
    assert committed_lines() == []
    assert recorded() == set()
