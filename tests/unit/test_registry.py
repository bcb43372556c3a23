from dataclasses import dataclass

import pytest

from domain_events import DomainEvent, handler
from domain_events.registry import HandlerRegistry


@dataclass(frozen=True)
class InvoiceEvent(DomainEvent):
    invoice_id: int


@dataclass(frozen=True)
class InvoicePaid(InvoiceEvent):
    amount: int


def test_handlers_are_split_by_when_they_run_and_kept_in_order(
    handlers: HandlerRegistry,
) -> None:
    def first(event: InvoicePaid) -> None: ...
    def second(event: InvoicePaid) -> None: ...
    def later(event: InvoicePaid) -> None: ...

    handler(InvoicePaid)(first)
    handler(InvoicePaid, on_commit=True)(later)
    handler(InvoicePaid)(second)
    plan = handlers.plan_for(InvoicePaid)
    assert plan.in_transaction == (first, second)
    assert plan.after_commit == (later,)


def test_a_handler_of_a_base_class_receives_subclass_events(handlers: HandlerRegistry) -> None:
    def audit(event: InvoiceEvent) -> None: ...

    handler(InvoiceEvent)(audit)
    assert handlers.plan_for(InvoicePaid).in_transaction == (audit,)
    assert handlers.plan_for(InvoiceEvent).in_transaction == (audit,)


def test_registering_the_same_function_twice_runs_it_once(handlers: HandlerRegistry) -> None:
    def once(event: InvoicePaid) -> None: ...

    handler(InvoicePaid)(once)
    handler(InvoicePaid)(once)
    assert handlers.plan_for(InvoicePaid).in_transaction == (once,)


def test_handler_needs_an_event_class() -> None:
    with pytest.raises(TypeError, match="DomainEvent subclass"):
        handler(int)(print)  # type: ignore[arg-type]


def test_isolated_registry_forgets_registrations(handlers: HandlerRegistry) -> None:
    inner = HandlerRegistry()
    with inner.isolated():
        inner.register(InvoicePaid, print, on_commit=False)
        assert inner.plan_for(InvoicePaid).in_transaction == (print,)
    assert inner.plan_for(InvoicePaid).in_transaction == ()


def send_invoice(event: InvoicePaid) -> None: ...


def test_durable_handlers_are_planned_by_dotted_name(handlers: HandlerRegistry) -> None:
    handler(InvoiceEvent, on_commit="durable")(send_invoice)
    handler(InvoicePaid, on_commit="durable")(send_invoice)  # one job per event, not two
    plan = handlers.plan_for(InvoicePaid)
    assert plan.durable == ("tests.unit.test_registry.send_invoice",)
    assert (plan.in_transaction, plan.after_commit) == ((), ())
    assert handlers.durable_handler("tests.unit.test_registry.send_invoice") is send_invoice
    assert handlers.durable_handler("tests.unit.test_registry.nothing") is None


def test_a_durable_handler_must_be_findable_by_name(handlers: HandlerRegistry) -> None:
    def nested(event: InvoicePaid) -> None: ...

    with pytest.raises(TypeError, match="defined at module level"):
        handler(InvoicePaid, on_commit="durable")(nested)
    with pytest.raises(TypeError, match="defined at module level"):
        handler(InvoicePaid, on_commit="durable")(lambda event: None)
    assert handlers.plan_for(InvoicePaid).durable == ()


def test_on_commit_takes_three_values_only() -> None:
    with pytest.raises(ValueError, match='False, True or "durable"'):
        handler(InvoicePaid, on_commit="later")(send_invoice)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match='False, True or "durable"'):
        handler(InvoicePaid, on_commit=1)(send_invoice)  # type: ignore[arg-type]
