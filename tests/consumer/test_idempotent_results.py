"""``@idempotent`` hands a duplicate call the first run's stored result (docs/consumers.md)."""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from outbox import idempotent
from outbox.models import InboxMessage
from tests.testapp.models import LogLine

# Awkward but plain JSON: nesting, a float, non-ASCII text, a NUL character, a lone
# surrogate, key order that jsonb would change, and a big integer.
RECEIPT: dict[str, Any] = {
    "zeta": 1,
    "a": [1.5, -0.0, 1e17, None, True, "é€", "nul\x00here", "half\ud800"],
    "nested": {"ok": False, "big": 2**70},
}


@pytest.mark.django_db
def test_a_duplicate_call_gets_the_first_runs_result_without_running() -> None:
    calls: list[int] = []

    @idempotent("celery-receipts")
    def charge(order_id: int, message_id: str) -> dict[str, Any]:
        calls.append(order_id)
        LogLine.objects.create(text=f"charged {order_id}")
        return {**RECEIPT, "order_id": order_id}

    first = charge(7, "m-1")
    again = charge(8, "m-1")  # other arguments: the message id alone decides

    assert again == first == {**RECEIPT, "order_id": 7}
    assert list(again) == list(first)  # key order kept too
    assert repr(again["a"][1]) == "-0.0"
    assert isinstance(again["a"][2], float)
    assert calls == [7]
    assert LogLine.objects.count() == 1
    assert charge(9, "m-2")["order_id"] == 9
    assert calls == [7, 9]


@pytest.mark.django_db
def test_none_is_returned_again_and_costs_no_extra_write() -> None:
    @idempotent("celery-none")
    def notify(message_id: str) -> None:
        LogLine.objects.create(text="notified")

    with CaptureQueriesContext(connection) as first:
        assert notify("m-1") is None
    assert notify("m-1") is None
    assert not any(q["sql"].startswith("UPDATE") for q in first.captured_queries)
    assert InboxMessage.objects.get(consumer="celery-none").result == ""
    assert LogLine.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("result", "named"),
    [
        (Decimal("1.50"), "result of type Decimal"),
        ({"at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)}, "result['at'] of type datetime"),
        ({"pair": (1, 2)}, "result['pair'] of type tuple (it would come back as a list)"),
        ({1: "one"}, "result with the key 1"),
        ([1.0, float("nan")], "result[1] = nan"),
        ({"rows": [object()]}, "result['rows'][0] of type object"),
    ],
)
def test_a_result_that_cannot_come_back_equal_fails_the_call_and_writes_nothing(
    result: object, named: str
) -> None:
    runs: list[str] = []

    @idempotent("celery-bad")
    def compute(message_id: str) -> object:
        runs.append(message_id)
        LogLine.objects.create(text="computed")
        return result

    with pytest.raises(TypeError, match=r"@idempotent .*compute\(\) returned ") as raised:
        compute("m-1")
    assert named in str(raised.value)
    # Rolled back whole: the function's writes and the inbox record, so a retry runs again.
    assert not LogLine.objects.exists()
    assert not InboxMessage.objects.filter(consumer="celery-bad").exists()
    with pytest.raises(TypeError):
        compute("m-1")
    assert runs == ["m-1", "m-1"]


@pytest.mark.django_db(transaction=True)
def test_a_concurrent_duplicate_waits_and_gets_the_committed_result() -> None:
    first_done = threading.Event()
    results: dict[str, Any] = {}

    @idempotent("celery-race")
    def book(message_id: str, who: str) -> dict[str, str]:
        return {"booked_by": who}

    def duplicate() -> None:
        first_done.wait(10)
        try:
            results["second"] = book("m-1", "second")
        finally:
            connection.close()

    thread = threading.Thread(target=duplicate)
    thread.start()
    with transaction.atomic():
        results["first"] = book("m-1", "first")
        first_done.set()
        # The duplicate is blocked on the uncommitted inbox record, not decided yet.
        thread.join(0.3)
        assert thread.is_alive()
    thread.join(10)
    assert results == {"first": {"booked_by": "first"}, "second": {"booked_by": "first"}}
