"""Projections: replay in global order, rebuild equals the live read model, and a follower
never skips an event whose transaction commits late."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from decimal import Decimal
from io import StringIO
from typing import ClassVar
from uuid import uuid4

import pytest
from django.core.management import call_command
from django.db import connection, transaction

from domain_events import (
    Checkpoint,
    EventStore,
    Projection,
    RecordedEvent,
    read_events,
    run_projection,
)
from domain_events.models import ProjectionCheckpoint, StoredEvent
from example_project.bank.accounts import Account
from example_project.bank.models import AccountBalance
from example_project.bank.projections import BalanceProjection
from tests.eventsourcing.aggregates import Tally

pytestmark = pytest.mark.django_db(transaction=True)

store = EventStore()


class CollectingProjection(Projection):
    """Remembers (aggregate id, version) of each event it is given, across instances."""

    name = "tests.collecting"
    seen: ClassVar[list[tuple[str, int]]] = []

    def handle(self, recorded: RecordedEvent) -> None:
        self.seen.append((recorded.aggregate_id, recorded.version))

    def reset(self) -> None:
        self.seen.clear()


def save_tally(label: str, additions: int = 0) -> Tally:
    tally = Tally.start(str(uuid4()), label, uuid4())
    for amount in range(additions):
        tally.add(Decimal(amount))
    with transaction.atomic():
        store.save(tally)
    return tally


def balances() -> dict[str, tuple[str, Decimal]]:
    return {b.account_id: (b.owner, b.balance) for b in AccountBalance.objects.all()}


def wait_for_events(after: Checkpoint, expected: int) -> list[RecordedEvent]:
    # The horizon is the oldest transaction on the whole server, which other processes on a
    # shared machine may hold open for a moment: wait for it rather than fail.
    deadline = time.monotonic() + 30
    while True:
        events = read_events(after)
        if len(events) >= expected or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


def wait_until_all_readable() -> None:
    """Wait until every committed event is below the horizon (see ``wait_for_events``)."""
    stored = StoredEvent.objects.count()
    assert len(wait_for_events(Checkpoint(), expected=stored)) == stored


def test_rebuilding_the_balances_equals_the_live_read_model() -> None:
    accounts = [Account.open(owner) for owner in ("ann", "bob", "cy")]
    for account in accounts:
        with transaction.atomic():
            store.save(account)
    for round_number in range(1, 6):
        for index, account in enumerate(accounts):
            account.deposit(Decimal(round_number * (index + 1)))
            if round_number % 2 == 0:
                account.withdraw(Decimal("1.25"))
            with transaction.atomic():
                store.save(account)
    live = balances()
    assert live[accounts[2].id] == ("cy", Decimal("42.50"))

    AccountBalance.objects.update(balance=Decimal(-999))  # a damaged read model
    wait_until_all_readable()
    progress = run_projection(BalanceProjection(), rebuild=True, batch_size=7)
    assert balances() == live
    assert progress.processed == StoredEvent.objects.count()
    assert progress.remaining == 0
    stored = ProjectionCheckpoint.objects.get(name="bank.balances")
    assert Checkpoint(stored.transaction_id, stored.position) == progress.checkpoint

    # Caught up: running again applies nothing.
    assert run_projection(BalanceProjection()).processed == 0


def test_events_are_read_in_commit_safe_global_order_and_resume_from_checkpoint() -> None:
    first, second = save_tally("a", additions=2), save_tally("b", additions=1)
    CollectingProjection.seen.clear()
    wait_until_all_readable()
    progress = run_projection(CollectingProjection(), batch_size=2)
    order = [(first.id, 1), (first.id, 2), (first.id, 3), (second.id, 1), (second.id, 2)]
    assert CollectingProjection.seen == order

    third = save_tally("c")
    wait_until_all_readable()
    run_projection(CollectingProjection())
    assert CollectingProjection.seen == [*order, (third.id, 1)]
    assert progress.checkpoint < read_events()[-1].checkpoint


def test_the_command_shows_progress_and_starts_after_a_given_checkpoint() -> None:
    tally = save_tally("a", additions=4)
    wait_until_all_readable()
    events = read_events()
    CollectingProjection.seen.clear()
    out = StringIO()
    call_command(
        "domain_events_project",
        "tests.eventsourcing.test_projections.CollectingProjection",
        "--after",
        str(events[2].checkpoint),
        "--batch-size",
        "1",
        stdout=out,
    )
    assert CollectingProjection.seen == [(tally.id, 4), (tally.id, 5)]
    text = out.getvalue()
    assert "1 applied, about 1 left" in text
    assert f"2 events applied, caught up at {events[-1].checkpoint}" in text

    out = StringIO()
    call_command(
        "domain_events_project",
        "tests.eventsourcing.test_projections.CollectingProjection",
        "--rebuild",
        stdout=out,
    )
    assert CollectingProjection.seen == [(tally.id, v) for v in range(1, 6)]


@pytest.mark.slow
@pytest.mark.parametrize("later_writer_starts_first", [False, True])
def test_a_writer_committing_late_never_makes_a_follower_skip_its_event(
    later_writer_starts_first: bool,
) -> None:
    """Writer A inserts its event first (lower position) and commits last.

    With ``later_writer_starts_first``, writer B's transaction began (took its transaction id)
    before A's, so B's event is safe to read while A is still open: a reader ordered by
    position alone would then pass A's lower position for good.
    """
    late_id, early_id = str(uuid4()), str(uuid4())
    b_has_transaction = threading.Event()
    a_inserted = threading.Event()
    b_committed = threading.Event()
    release_a = threading.Event()
    positions: dict[str, int] = {}
    errors: list[BaseException] = []

    def in_thread(body: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            try:
                body()
            except BaseException as error:
                errors.append(error)
                release_a.set()
            finally:
                connection.close()

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    def writer_a() -> None:
        if later_writer_starts_first:
            assert b_has_transaction.wait(30)
        with transaction.atomic():
            store.save(Tally.start(late_id, "late", uuid4()))
            positions["late"] = StoredEvent.objects.get(aggregate_id=late_id).position
            a_inserted.set()
            assert release_a.wait(60)

    def writer_b() -> None:
        with transaction.atomic():
            if later_writer_starts_first:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_current_xact_id()")
                b_has_transaction.set()
            assert a_inserted.wait(30)
            store.save(Tally.start(early_id, "early", uuid4()))
            positions["early"] = StoredEvent.objects.get(aggregate_id=early_id).position
        b_committed.set()

    threads = [in_thread(writer_a), in_thread(writer_b)]
    try:
        assert b_committed.wait(30), errors
        assert positions["early"] > positions["late"]
        if later_writer_starts_first:
            seen = wait_for_events(Checkpoint(), expected=1)
            assert [e.aggregate_id for e in seen] == [early_id]
        else:
            # B's transaction is younger than A's, which is still open: nothing is safe yet.
            seen = read_events()
            assert seen == []
    finally:
        release_a.set()
        for thread in threads:
            thread.join(60)
    assert errors == []
    after = seen[-1].checkpoint if seen else Checkpoint()
    rest = wait_for_events(after, expected=2 - len(seen))
    followed = [e.aggregate_id for e in seen + rest]
    assert sorted(followed) == sorted([late_id, early_id])
    assert len(followed) == 2


class FailingProjection(Projection):
    """Writes a balance row per event, and fails on the event of a chosen aggregate."""

    name = "tests.failing"
    fail_on: ClassVar[str] = ""

    def handle(self, recorded: RecordedEvent) -> None:
        AccountBalance.objects.create(
            account_id=f"{recorded.aggregate_id}:{recorded.version}", owner="x", balance=0
        )
        if recorded.aggregate_id == self.fail_on:
            raise RuntimeError("projection failed")


def test_a_failing_batch_rolls_back_and_is_retried_from_its_first_event() -> None:
    first, second = save_tally("a"), save_tally("b")
    wait_until_all_readable()
    FailingProjection.fail_on = second.id
    with pytest.raises(RuntimeError, match="projection failed"):
        run_projection(FailingProjection(), batch_size=10)
    assert not AccountBalance.objects.exists()
    assert ProjectionCheckpoint.objects.get(name="tests.failing").position == 0

    FailingProjection.fail_on = ""
    assert run_projection(FailingProjection()).processed == 2
    assert set(AccountBalance.objects.values_list("account_id", flat=True)) == {
        f"{first.id}:1",
        f"{second.id}:1",
    }
