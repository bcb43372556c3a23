"""Dispatching: run in-transaction handlers now, schedule after-commit handlers with on_commit,
and write the jobs of durable after-commit handlers in the transaction.

Django has no "before commit" signal (``on_commit`` runs after COMMIT, outside the
transaction), so "before commit" here means: inside the atomic block that saves the aggregate,
right after its row is written.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from contextvars import ContextVar
from functools import partial
from typing import TYPE_CHECKING

from django.db import DEFAULT_DB_ALIAS, transaction

from domain_events.conf import max_cascade_depth
from domain_events.durable import jobs_for
from domain_events.events import DomainEvent
from domain_events.exceptions import CascadeDepthError, TransactionRequiredError
from domain_events.registry import EventHandler, registry

if TYPE_CHECKING:
    from outbox.jobs.writer import Job

logger = logging.getLogger("domain_events")

# The event types whose handlers are running right now, outermost first. Its length is the
# cascade depth; it is a ContextVar so that threads and async tasks each have their own.
_cascade: ContextVar[tuple[str, ...]] = ContextVar("domain_events_cascade", default=())


def dispatch(events: Iterable[DomainEvent], *, using: str = DEFAULT_DB_ALIAS) -> None:
    """Dispatch ``events`` to their handlers inside the current transaction on ``using``.

    In-transaction handlers run now, in registration order; an exception propagates to the
    caller (whose atomic block then rolls back). After-commit handlers are queued with
    ``transaction.on_commit`` and run only if the transaction commits; durable ones are
    written as local jobs in this transaction (``domain_events.durable``). Must be called
    inside ``transaction.atomic(using=using)``.
    """
    if not transaction.get_connection(using).in_atomic_block:
        raise TransactionRequiredError(
            "domain events are dispatched before commit, so dispatch() must run inside"
            f" transaction.atomic(using={using!r})"
        )
    cascade = _cascade.get()
    limit = max_cascade_depth()
    durable_jobs: list[Job] = []
    for event in events:
        if not isinstance(event, DomainEvent):
            raise TypeError(f"dispatch() takes DomainEvent instances, got {event!r}")
        if len(cascade) >= limit:
            path = " -> ".join((*cascade, event.event_type))
            raise CascadeDepthError(
                f"domain event handlers cascaded deeper than {limit} levels ({path});"
                ' raise DOMAIN_EVENTS["MAX_CASCADE_DEPTH"] if this is intended, otherwise a'
                " handler is recording the events that trigger it"
            )
        plan = registry.plan_for(type(event))
        token = _cascade.set((*cascade, event.event_type))
        try:
            for func in plan.in_transaction:
                func(event)
        finally:
            _cascade.reset(token)
        for func in plan.after_commit:
            transaction.on_commit(partial(_run_after_commit, func, event), using=using)
        if plan.durable:
            durable_jobs.extend(jobs_for(event, plan.durable))
    if durable_jobs:
        from outbox.jobs import enqueue  # the outbox's models must be loaded first

        enqueue(durable_jobs, using=using)


def dispatch_pending(pending: list[DomainEvent], *, using: str = DEFAULT_DB_ALIAS) -> None:
    """Dispatch and empty ``pending``, an aggregate's list of recorded events.

    Events that handlers append to the same list while it is dispatched are dispatched next,
    one cascade level deeper. If anything fails, ``pending`` is put back as it was at the call
    (events recorded by the failed handlers are dropped with their rolled-back effects) and the
    error propagates, so the caller can fix the cause and save again.
    """
    recorded = list(pending)
    outer = _cascade.get()
    try:
        while pending:
            generation = list(pending)
            pending.clear()
            dispatch(generation, using=using)
            # The next generation was caused by this one's handlers: one level deeper.
            label = "+".join(dict.fromkeys(event.event_type for event in generation))
            _cascade.set((*_cascade.get(), label))
    except BaseException:
        pending[:] = recorded
        raise
    finally:
        _cascade.set(outer)


def _run_after_commit(func: EventHandler, event: DomainEvent) -> None:
    # The transaction has committed: a failure here cannot undo it, and must not stop the
    # other after-commit handlers, so it is logged with enough to find the event again.
    try:
        func(event)
    except Exception:
        logger.exception(
            "after-commit handler %s.%s failed for %s event %s",
            getattr(func, "__module__", "?"),
            getattr(func, "__qualname__", repr(func)),
            event.event_type,
            event.event_id,
        )
