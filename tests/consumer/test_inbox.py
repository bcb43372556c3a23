"""The inbox on its own: claims, the idempotent decorator for other receivers, the purge."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from outbox import idempotent
from outbox.consumer.inbox import claim, claim_batch, purge_inbox
from outbox.exceptions import InvalidMessageError, TransactionRequiredError
from outbox.models import InboxMessage
from tests.testapp.models import LogLine


@pytest.mark.django_db
def test_claim_is_true_once_per_consumer_and_message() -> None:
    message_id = uuid.uuid4()
    with transaction.atomic():
        assert claim("billing", message_id, event_type="orders.order_placed") is True
        assert claim("billing", str(message_id)) is False
        assert claim("shipping", message_id) is True
    record = InboxMessage.objects.get(consumer="billing")
    assert (record.message_id, record.event_type) == (str(message_id), "orders.order_placed")


#: Message ids that a JSON or SQL encoding could get wrong: quotes, backslashes, escapes,
#: control characters, non-ASCII text beyond the BMP, JSON itself.
AWKWARD_IDS = [
    "plain",
    "it's",
    'say "hi"',
    "back\\slash\\u0041",
    "tab\tnew\nline\x01",
    "caf\u00e9 \u2028 \U0001f600",
    '["not", "an", "array"]',
    "x" * 255,
]


@pytest.mark.django_db
@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "client-side"])
def test_claim_batch_records_awkward_ids_exactly_and_returns_only_the_new_ones(
    prepared: bool, settings: Any
) -> None:
    settings.OUTBOX = {**settings.OUTBOX, "PREPARED_INSERT": prepared}
    long_type = "t" * 300
    with transaction.atomic():
        assert claim("billing", "it's") is True  # recorded before: a duplicate in the batch
        with CaptureQueriesContext(connection) as queries:
            fresh = claim_batch(
                "billing", [(message_id, long_type) for message_id in AWKWARD_IDS], using="default"
            )
        with connection.cursor() as cursor:
            # Prepared on the server for real: Django's connections start with psycopg's
            # prepare_threshold=None, under which prepare=True alone does nothing.
            cursor.execute(
                "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
                ["%json_array_elements_text%"],
            )
            assert cursor.fetchone()[0] == (1 if prepared else 0)
    assert fresh == set(AWKWARD_IDS) - {"it's"}
    # The prepared statement goes around Django's query log: which path ran.
    assert len(queries) == (0 if prepared else 1)
    records = dict(
        InboxMessage.objects.filter(consumer="billing").values_list("message_id", "event_type")
    )
    assert set(records) == set(AWKWARD_IDS)
    # The event type is cut to the column's 255 characters; the duplicate keeps its own.
    assert {records[message_id] for message_id in fresh} == {"t" * 255}
    assert records["it's"] == ""


@pytest.mark.django_db(transaction=True)
def test_claim_outside_a_transaction_raises_and_writes_nothing() -> None:
    with pytest.raises(TransactionRequiredError, match=r"transaction\.atomic"):
        claim("billing", "m-1")
    assert not InboxMessage.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("consumer", "message_id"), [("", "m"), ("billing", ""), ("billing", "x" * 256), ("b", 42)]
)
def test_claim_refuses_bad_keys(consumer: str, message_id: object) -> None:
    with transaction.atomic(), pytest.raises(InvalidMessageError):
        claim(consumer, message_id)  # type: ignore[arg-type]  # the bad input under test


@pytest.mark.django_db
def test_idempotent_runs_once_per_message_id_and_again_after_a_rollback() -> None:
    calls: list[str] = []

    @idempotent("celery-billing")
    def charge(order_id: int, *, message_id: str, fail: bool = False) -> str:
        calls.append(message_id)
        LogLine.objects.create(text=f"charged {order_id}")
        if fail:
            raise RuntimeError("card declined")
        return "charged"

    with pytest.raises(RuntimeError):
        charge(1, message_id="m-1", fail=True)
    assert not LogLine.objects.exists()  # rolled back with its inbox record

    assert charge(1, message_id="m-1") == "charged"
    assert charge(1, message_id="m-1") == "charged"  # the stored result, without a run
    assert charge(2, message_id="m-2") == "charged"
    assert calls == ["m-1", "m-1", "m-2"]
    assert LogLine.objects.count() == 2


def test_idempotent_needs_the_message_id_argument() -> None:
    with pytest.raises(TypeError, match="no argument 'message_id'"):

        @idempotent("billing")
        def handle(order_id: int) -> None: ...


@pytest.mark.django_db(transaction=True)
def test_a_concurrent_duplicate_waits_for_the_first_transaction_then_skips() -> None:
    first_claimed = threading.Event()
    release_first = threading.Event()
    second_result: list[bool] = []

    def second() -> None:
        first_claimed.wait(10)
        try:
            with transaction.atomic():
                second_result.append(claim("billing", "m-1"))
        finally:
            connection.close()

    thread = threading.Thread(target=second)
    thread.start()
    with transaction.atomic():
        assert claim("billing", "m-1")
        first_claimed.set()
        # The second claim is blocked on the first's uncommitted row, not yet decided.
        thread.join(timeout=1)
        assert thread.is_alive()
        release_first.set()
    thread.join(timeout=10)
    assert second_result == [False]


def _age(count: int, days: float) -> None:
    processed_at = timezone.now() - timedelta(days=days)
    InboxMessage.objects.bulk_create(
        InboxMessage(consumer="c", message_id=f"{days}-{n}", processed_at=processed_at)
        for n in range(count)
    )


@pytest.mark.django_db
def test_purge_deletes_only_records_older_than_the_window_in_batches() -> None:
    _age(7, days=20)
    _age(3, days=1)
    with CaptureQueriesContext(connection) as queries:
        assert purge_inbox(older_than=timedelta(days=14), batch_size=3) == 7
    assert InboxMessage.objects.count() == 3
    # 7 old records in batches of 3: three deletes that found rows, the last one short.
    assert sum(query["sql"].startswith("DELETE") for query in queries.captured_queries) == 3


@pytest.mark.django_db
def test_purge_defaults_to_the_retention_setting() -> None:
    _age(2, days=15)
    _age(2, days=13)
    assert purge_inbox() == 2  # INBOX_RETENTION defaults to 14 days


@pytest.mark.django_db
def test_purge_command_and_task() -> None:
    from outbox.tasks import purge_inbox as purge_task

    _age(2, days=3)
    _age(1, days=30)
    assert purge_task.apply().get() == 1
    output = StringIO()
    call_command("outbox_purge_inbox", "--older-than-days", "2", stdout=output)
    assert output.getvalue().startswith("deleted 2 inbox records")
    with pytest.raises(CommandError, match="--batch-size"):
        call_command("outbox_purge_inbox", "--batch-size", "0")
