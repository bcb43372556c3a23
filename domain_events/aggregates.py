"""``AggregateRoot``: a Django model that records domain events and dispatches them on save."""

from __future__ import annotations

from typing import Any

from django.db import models, router, transaction

from domain_events.dispatcher import dispatch_pending
from domain_events.events import DomainEvent

_PENDING_ATTRIBUTE = "_domain_events_pending"


class AggregateRoot(models.Model):
    """Abstract base model for aggregates that record domain events.

    ``record_event()`` only remembers the event. ``save()`` and ``delete()`` write the row and
    dispatch the pending events in the same transaction, before it commits (opening one with
    ``transaction.atomic`` when none is open, and a savepoint when one is). If a handler
    raises, the row and every handler's writes roll back to that savepoint, the events stay
    pending on the instance, and the exception propagates. Once dispatched, events are
    cleared, so saving again never dispatches them twice.

    Bulk operations (``QuerySet.update``, ``bulk_create``, ``QuerySet.delete``) do not call
    ``save()`` and so dispatch nothing.
    """

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        using = kwargs.get("using") or router.db_for_write(type(self), instance=self)
        with transaction.atomic(using=using):
            super().save(*args, **kwargs)
            dispatch_pending(self._pending_list(), using=using)

    def delete(self, using: Any = None, keep_parents: bool = False) -> tuple[int, dict[str, int]]:
        alias = using or router.db_for_write(type(self), instance=self)
        with transaction.atomic(using=alias):
            # Handlers run before the row goes, so they can still read it.
            dispatch_pending(self._pending_list(), using=alias)
            return super().delete(using=alias, keep_parents=keep_parents)

    def record_event(self, event: DomainEvent) -> None:
        """Remember ``event``; it is dispatched by the next ``save()`` or ``delete()``."""
        if not isinstance(event, DomainEvent):
            raise TypeError(f"record_event() takes a DomainEvent, got {event!r}")
        self._pending_list().append(event)

    @property
    def pending_events(self) -> tuple[DomainEvent, ...]:
        """Events recorded and not yet dispatched, oldest first."""
        return tuple(self._pending_list())

    def _pending_list(self) -> list[DomainEvent]:
        # Kept in the instance dict, not set in __init__, so Django's model construction paths
        # (from_db, deferred loading, copies) need no changes.
        pending: list[DomainEvent] | None = self.__dict__.get(_PENDING_ATTRIBUTE)
        if pending is None:
            pending = []
            self.__dict__[_PENDING_ATTRIBUTE] = pending
        return pending
