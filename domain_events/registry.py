"""Which handlers run for which event class: the ``@handler`` decorator and its table."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from domain_events.events import DomainEvent

EventHandler = Callable[[Any], object]
HandlerT = TypeVar("HandlerT", bound=EventHandler)


@dataclass(frozen=True)
class Registration:
    event_class: type[DomainEvent]
    func: EventHandler
    on_commit: bool


@dataclass(frozen=True)
class HandlerPlan:
    """The handlers for one event class, in registration order, split by when they run."""

    in_transaction: tuple[EventHandler, ...]
    after_commit: tuple[EventHandler, ...]


class HandlerRegistry:
    """Handlers by event class. A handler registered for a base class also gets its subclasses."""

    def __init__(self) -> None:
        self._registrations: list[Registration] = []
        self._plans: dict[type[DomainEvent], HandlerPlan] = {}

    def register(
        self, event_class: type[DomainEvent], func: EventHandler, *, on_commit: bool
    ) -> None:
        if not (isinstance(event_class, type) and issubclass(event_class, DomainEvent)):
            raise TypeError(f"@handler needs a DomainEvent subclass, got {event_class!r}")
        if not callable(func):
            raise TypeError(f"@handler decorates a callable, got {func!r}")
        registration = Registration(event_class, func, on_commit)
        # Importing a handlers module twice must not run its handlers twice.
        if registration not in self._registrations:
            self._registrations.append(registration)
            self._plans.clear()

    def plan_for(self, event_class: type[DomainEvent]) -> HandlerPlan:
        plan = self._plans.get(event_class)
        if plan is None:
            matching = [r for r in self._registrations if issubclass(event_class, r.event_class)]
            plan = HandlerPlan(
                in_transaction=tuple(r.func for r in matching if not r.on_commit),
                after_commit=tuple(r.func for r in matching if r.on_commit),
            )
            self._plans[event_class] = plan
        return plan

    @contextmanager
    def isolated(self) -> Iterator[HandlerRegistry]:
        """Within the block, handlers registered are forgotten afterwards (for tests)."""
        saved = list(self._registrations)
        try:
            yield self
        finally:
            self._registrations = saved
            self._plans.clear()


registry = HandlerRegistry()


def handler(
    event_class: type[DomainEvent], *, on_commit: bool = False
) -> Callable[[HandlerT], HandlerT]:
    """Register the decorated function as a handler of ``event_class`` (and its subclasses).

    By default the handler runs inside the transaction that saves the aggregate, before it
    commits; an exception it raises rolls the whole transaction back. With ``on_commit=True``
    it runs after the commit (``transaction.on_commit``), never after a rollback; its errors
    are logged and do not stop the other after-commit handlers.
    """

    def decorate(func: HandlerT) -> HandlerT:
        registry.register(event_class, func, on_commit=on_commit)
        return func

    return decorate
