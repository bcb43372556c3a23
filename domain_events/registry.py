"""Which handlers run for which event class: the ``@handler`` decorator and its table."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from domain_events.events import DomainEvent

EventHandler = Callable[[Any], object]
HandlerT = TypeVar("HandlerT", bound=EventHandler)
#: When a handler runs: False in the transaction, True after the commit (best effort),
#: "durable" after the commit as a recorded, retried local job.
OnCommit = bool | Literal["durable"]
DURABLE: Literal["durable"] = "durable"
# A durable handler's name is stored with each job (outbox_job.name holds 190 characters).
_MAX_DURABLE_NAME = 190


@dataclass(frozen=True)
class Registration:
    event_class: type[DomainEvent]
    func: EventHandler
    on_commit: OnCommit


@dataclass(frozen=True)
class HandlerPlan:
    """The handlers for one event class, in registration order, split by when they run."""

    in_transaction: tuple[EventHandler, ...]
    after_commit: tuple[EventHandler, ...]
    # The dotted names of the durable after-commit handlers (``durable_name``).
    durable: tuple[str, ...] = ()


class HandlerRegistry:
    """Handlers by event class. A handler registered for a base class also gets its subclasses."""

    def __init__(self) -> None:
        self._registrations: list[Registration] = []
        self._plans: dict[type[DomainEvent], HandlerPlan] = {}

    def register(
        self, event_class: type[DomainEvent], func: EventHandler, *, on_commit: OnCommit
    ) -> None:
        if not (isinstance(event_class, type) and issubclass(event_class, DomainEvent)):
            raise TypeError(f"@handler needs a DomainEvent subclass, got {event_class!r}")
        if not callable(func):
            raise TypeError(f"@handler decorates a callable, got {func!r}")
        if on_commit is not True and on_commit is not False and on_commit != DURABLE:
            raise ValueError(
                f'@handler(on_commit=...) is False, True or "durable", got {on_commit!r}'
            )
        if on_commit == DURABLE:
            durable_name(func)  # raises if the runner could not find it again
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
                after_commit=tuple(r.func for r in matching if r.on_commit is True),
                durable=tuple(
                    dict.fromkeys(durable_name(r.func) for r in matching if r.on_commit == DURABLE)
                ),
            )
            self._plans[event_class] = plan
        return plan

    def durable_handler(self, name: str) -> EventHandler | None:
        """The durable handler registered under the dotted ``name``, or None."""
        for registration in reversed(self._registrations):
            if registration.on_commit == DURABLE and durable_name(registration.func) == name:
                return registration.func
        return None

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


def durable_name(func: EventHandler) -> str:
    """The name a durable handler is stored under: ``module.qualified_name``.

    Raises ``TypeError`` for a function the job runner, in another process, could not find
    again by that name: a lambda, or one defined inside another function.
    """
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        raise TypeError(
            f'@handler(on_commit="durable") needs a function defined at module level (the job'
            f" runner finds it again by its dotted name), got {func!r}"
        )
    name = f"{module}.{qualname}"
    if len(name) > _MAX_DURABLE_NAME:
        raise TypeError(
            f"a durable handler's dotted name is at most {_MAX_DURABLE_NAME} characters,"
            f" {name!r} has {len(name)}"
        )
    return name


def handler(
    event_class: type[DomainEvent], *, on_commit: OnCommit = False
) -> Callable[[HandlerT], HandlerT]:
    """Register the decorated function as a handler of ``event_class`` (and its subclasses).

    By default the handler runs inside the transaction that saves the aggregate, before it
    commits; an exception it raises rolls the whole transaction back. With ``on_commit=True``
    it runs after the commit (``transaction.on_commit``), never after a rollback; its errors
    are logged and do not stop the other after-commit handlers; a crash between the commit and
    the call loses it.

    With ``on_commit="durable"`` the call is recorded as a local job in the same transaction
    as the event, then run after the commit by the job runner (``outbox_jobs`` or the Celery
    task ``outbox.tasks.run_jobs``), in its own transaction, at most once per event, retried
    with backoff and marked failed when it never succeeds. The function must be defined at
    module level and the event's fields must be storable as JSON.
    """

    def decorate(func: HandlerT) -> HandlerT:
        registry.register(event_class, func, on_commit=on_commit)
        return func

    return decorate
