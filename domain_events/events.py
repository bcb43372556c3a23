"""The ``DomainEvent`` base class and the table of stable event type names."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar
from uuid import UUID, uuid4

from domain_events.exceptions import EventTypeConflictError
from domain_events.names import StableNames

# Letters, digits and the separators people use in event names ("OrderPlaced",
# "orders.order_placed", "billing/InvoicePaid"); no spaces, so a name is safe in logs, headers
# and routing keys.
_EVENT_TYPE_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/<>-]{0,254}$")

_event_types: StableNames[type[DomainEvent]] = StableNames(
    "event type", "event_type", EventTypeConflictError
)


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, kw_only=True)
class DomainEvent:
    """Something that happened in the domain, recorded by an aggregate.

    Subclasses are plain ``@dataclass(frozen=True)`` classes. ``event_id`` and ``occurred_at``
    are keyword-only fields of this base, so subclasses may declare required fields without
    defaults. Each subclass gets a stable ``event_type`` name: the class name by default, or
    the name given as a class keyword (``class OrderPlacedV2(DomainEvent,
    event_type="OrderPlaced")``), which is what lets a class be renamed or moved without
    breaking stored data.
    """

    event_id: UUID = field(default_factory=uuid4)
    occurred_at: datetime = field(default_factory=_utc_now)

    event_type: ClassVar[str] = "DomainEvent"

    def __init_subclass__(cls, *, event_type: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = event_type if event_type is not None else cls.__name__
        if not isinstance(name, str) or not _EVENT_TYPE_PATTERN.match(name):
            raise EventTypeConflictError(
                f"{cls.__qualname__}: event type {name!r} is not a valid name (1-255 characters:"
                " letters, digits, '_', '.', ':', '/', '-'; starting with a letter or '_')"
            )
        _event_types.claim(name, cls)
        cls.event_type = name


def event_class_for(event_type: str) -> type[DomainEvent]:
    """Return the event class registered under the stable name ``event_type``.

    Raises ``KeyError`` with the unknown name when no imported class uses it.
    """
    cls = _event_types.get(event_type)
    if cls is None:
        raise KeyError(f"no DomainEvent subclass is registered as {event_type!r}")
    return cls
