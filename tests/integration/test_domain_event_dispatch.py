"""Two-phase dispatch against real PostgreSQL transactions that commit or roll back."""

import logging

import pytest
from django.db import transaction

from domain_events import CascadeDepthError, dispatch, handler
from domain_events.exceptions import TransactionRequiredError
from domain_events.registry import HandlerRegistry
from tests.testapp.models import Counter, CounterBumped, CounterEchoed, LogLine

pytestmark = pytest.mark.django_db(transaction=True)


class HandlerFailedError(Exception):
    pass


def log(text: str) -> None:
    LogLine.objects.create(text=text)


def logged() -> list[str]:
    return list(LogLine.objects.order_by("id").values_list("text", flat=True))


def test_recording_dispatches_nothing_until_save(handlers: HandlerRegistry) -> None:
    seen: list[CounterBumped] = []
    handler(CounterBumped)(seen.append)
    counter = Counter(name="a")
    counter.bump()
    assert seen == []
    assert [type(e) for e in counter.pending_events] == [CounterBumped]
    counter.save()
    assert [e.counter_name for e in seen] == ["a"]
    assert counter.pending_events == ()


def test_handler_writes_commit_with_the_aggregate(handlers: HandlerRegistry) -> None:
    @handler(CounterBumped)
    def write_log(event: CounterBumped) -> None:
        assert transaction.get_connection().in_atomic_block
        log(f"bumped {event.counter_name} by {event.by}")

    counter = Counter(name="a")
    counter.bump(3)
    counter.save()
    assert Counter.objects.get(name="a").value == 3
    assert logged() == ["bumped a by 3"]


def test_failing_handler_rolls_back_row_and_every_handlers_writes(
    handlers: HandlerRegistry,
) -> None:
    handler(CounterBumped)(lambda event: log("first handler ran"))

    @handler(CounterBumped)
    def refuse(event: CounterBumped) -> None:
        raise HandlerFailedError("no")

    counter = Counter(name="a")
    counter.bump()
    with pytest.raises(HandlerFailedError):
        counter.save()
    assert not Counter.objects.exists()
    assert logged() == []
    # The events were not lost: they are still pending, ready for a retry.
    assert [type(e) for e in counter.pending_events] == [CounterBumped]


def test_failed_save_can_be_retried_and_dispatches_once(handlers: HandlerRegistry) -> None:
    attempts: list[int] = []

    @handler(CounterBumped)
    def flaky(event: CounterBumped) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise HandlerFailedError("first time")
        log("handled")

    counter = Counter(name="a")
    counter.bump()
    with pytest.raises(HandlerFailedError):
        counter.save()
    counter.save()
    assert logged() == ["handled"]
    counter.save()
    assert logged() == ["handled"], "a second save must not dispatch again"


def test_after_commit_handlers_run_only_after_commit(handlers: HandlerRegistry) -> None:
    states: list[bool] = []

    @handler(CounterBumped, on_commit=True)
    def after(event: CounterBumped) -> None:
        states.append(transaction.get_connection().in_atomic_block)

    with transaction.atomic():
        counter = Counter(name="a")
        counter.bump()
        counter.save()
        assert states == [], "ran before the outer transaction committed"
    assert states == [False]


def test_after_commit_handlers_never_run_after_a_rollback(handlers: HandlerRegistry) -> None:
    ran: list[object] = []
    handler(CounterBumped, on_commit=True)(ran.append)

    def place_then_fail() -> None:
        with transaction.atomic():
            counter = Counter(name="a")
            counter.bump()
            counter.save()
            raise HandlerFailedError("business rule broken later in the request")

    with pytest.raises(HandlerFailedError):
        place_then_fail()
    assert ran == []
    assert not Counter.objects.exists()


def test_a_failing_after_commit_handler_is_logged_and_others_still_run(
    handlers: HandlerRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []

    @handler(CounterBumped, on_commit=True)
    def broken(event: CounterBumped) -> None:
        raise HandlerFailedError("smtp down")

    handler(CounterBumped, on_commit=True)(lambda event: ran.append("second"))
    counter = Counter(name="a")
    counter.bump()
    with caplog.at_level(logging.ERROR, logger="domain_events"):
        counter.save()
    assert ran == ["second"]
    assert Counter.objects.get().value == 1
    [record] = [r for r in caplog.records if r.name == "domain_events"]
    assert "broken" in record.getMessage()
    assert counter.pending_events == ()
    assert record.exc_info is not None
    assert record.exc_info[0] is HandlerFailedError


def test_save_inside_atomic_uses_a_savepoint(handlers: HandlerRegistry) -> None:
    """A failing save inside an outer atomic block undoes only itself when caught."""

    @handler(CounterBumped)
    def refuse_b(event: CounterBumped) -> None:
        log(f"saw {event.counter_name}")
        if event.counter_name == "b":
            raise HandlerFailedError("b refused")

    with transaction.atomic():
        good = Counter(name="a")
        good.bump()
        good.save()
        bad = Counter(name="b")
        bad.bump()
        with pytest.raises(HandlerFailedError):
            bad.save()
    assert list(Counter.objects.values_list("name", flat=True)) == ["a"]
    assert logged() == ["saw a"]


def test_savepoint_rollback_undoes_the_handlers_and_drops_their_after_commit_work(
    handlers: HandlerRegistry,
) -> None:
    after: list[str] = []
    handler(CounterBumped)(lambda event: log(f"in {event.counter_name}"))
    handler(CounterBumped, on_commit=True)(lambda event: after.append(event.counter_name))

    with transaction.atomic():
        kept = Counter(name="kept")
        kept.bump()
        kept.save()
        try:
            with transaction.atomic():
                dropped = Counter(name="dropped")
                dropped.bump()
                dropped.save()
                raise HandlerFailedError("roll the savepoint back")
        except HandlerFailedError:
            pass
    assert list(Counter.objects.values_list("name", flat=True)) == ["kept"]
    assert logged() == ["in kept"]
    assert after == ["kept"]
    # Dispatched inside the rolled-back savepoint: the instance does not get them back.
    assert dropped.pending_events == ()


def test_handlers_may_save_other_aggregates_whose_events_are_dispatched_too(
    handlers: HandlerRegistry,
) -> None:
    @handler(CounterBumped)
    def mirror(event: CounterBumped) -> None:
        if event.counter_name == "source":
            shadow, _ = Counter.objects.get_or_create(name="shadow")
            shadow.bump(event.by)
            shadow.save()

    handler(CounterBumped)(lambda event: log(f"bumped {event.counter_name}"))
    source = Counter(name="source")
    source.bump(2)
    source.save()
    assert dict(Counter.objects.values_list("name", "value")) == {"source": 2, "shadow": 2}
    assert logged() == ["bumped shadow", "bumped source"]


def test_events_recorded_on_the_same_aggregate_by_a_handler_are_dispatched(
    handlers: HandlerRegistry,
) -> None:
    counter = Counter(name="a")

    @handler(CounterBumped)
    def echo(event: CounterBumped) -> None:
        counter.record_event(CounterEchoed(counter_name=event.counter_name, hops=1))

    handler(CounterEchoed)(lambda event: log(f"echo {event.hops}"))
    counter.bump()
    counter.save()
    assert logged() == ["echo 1"]
    assert counter.pending_events == ()


def test_runaway_cascade_stops_at_the_configured_depth_and_rolls_back(
    handlers: HandlerRegistry, settings: object
) -> None:
    setattr(settings, "DOMAIN_EVENTS", {"MAX_CASCADE_DEPTH": 5})  # noqa: B010
    counter = Counter(name="loop")

    @handler(CounterEchoed)
    def echo_forever(event: CounterEchoed) -> None:
        log(f"hop {event.hops}")
        counter.record_event(CounterEchoed(counter_name="loop", hops=event.hops + 1))

    counter.record_event(CounterEchoed(counter_name="loop", hops=1))
    with pytest.raises(CascadeDepthError, match=r"deeper than 5 levels .*CounterEchoed"):
        counter.save()
    assert not Counter.objects.exists()
    assert logged() == []


def test_cascade_through_other_aggregates_is_bounded_too(
    handlers: HandlerRegistry, settings: object
) -> None:
    setattr(settings, "DOMAIN_EVENTS", {"MAX_CASCADE_DEPTH": 4})  # noqa: B010

    @handler(CounterBumped)
    def next_counter(event: CounterBumped) -> None:
        following = Counter(name=f"{event.counter_name}+")
        following.bump()
        following.save()

    first = Counter(name="c")
    first.bump()
    with pytest.raises(CascadeDepthError):
        first.save()
    assert not Counter.objects.exists()


def test_delete_dispatches_pending_events_before_the_row_goes(
    handlers: HandlerRegistry,
) -> None:
    counter = Counter.objects.create(name="gone")

    @handler(CounterEchoed)
    def still_there(event: CounterEchoed) -> None:
        log(f"exists={Counter.objects.filter(name=event.counter_name).exists()}")

    counter.record_event(CounterEchoed(counter_name="gone", hops=0))
    counter.delete()
    assert logged() == ["exists=True"]
    assert not Counter.objects.exists()


def test_dispatch_outside_a_transaction_is_refused() -> None:
    with pytest.raises(TransactionRequiredError, match=r"transaction\.atomic"):
        dispatch([CounterBumped(counter_name="x", by=1)])


def test_record_event_takes_only_domain_events() -> None:
    with pytest.raises(TypeError, match="DomainEvent"):
        Counter(name="a").record_event("bumped")  # type: ignore[arg-type]
