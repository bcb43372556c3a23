"""Two-phase domain events: aggregates record events, saving dispatches them in the transaction.

Public names are exported lazily (PEP 562) because ``AggregateRoot`` is a Django model, and a
model class cannot be created while Django is still importing the apps listed in
``INSTALLED_APPS`` (this package is one of them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from domain_events.events import DomainEvent
from domain_events.exceptions import CascadeDepthError, DomainEventError, EventTypeConflictError
from domain_events.registry import handler

if TYPE_CHECKING:
    from domain_events.aggregates import AggregateRoot
    from domain_events.dispatcher import dispatch

__all__ = [
    "AggregateRoot",
    "CascadeDepthError",
    "DomainEvent",
    "DomainEventError",
    "EventTypeConflictError",
    "dispatch",
    "handler",
]


def __getattr__(name: str) -> Any:
    if name == "AggregateRoot":
        from domain_events.aggregates import AggregateRoot

        return AggregateRoot
    if name == "dispatch":
        from domain_events.dispatcher import dispatch

        return dispatch
    raise AttributeError(f"module 'domain_events' has no attribute {name!r}")
