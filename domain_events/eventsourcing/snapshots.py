"""When an event-sourced aggregate's save also writes a snapshot: the snapshot policy.

A policy looks at one save (``SnapshotContext``) and answers ``due()``. The built-in rules go
by event count (``EveryNEvents``, what ``snapshot_every = N`` means), by event type
(``OnEventTypes``) and by time since the last snapshot (``TimeSinceLastSnapshot``); ``a | b``
is due when either is. Subclass ``SnapshotPolicy`` for any other rule.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from domain_events.events import DomainEvent

if TYPE_CHECKING:
    from domain_events.eventsourcing.aggregate import EventSourcedAggregate


@dataclass(frozen=True)
class SnapshotContext:
    """What a policy knows about one save, before anything is written.

    ``previous_version`` is the version the aggregate was loaded at, ``version`` the one after
    this save, ``new_events`` the events it writes. ``last_snapshot_version`` and
    ``last_snapshot_at`` describe the snapshot the aggregate was loaded from or last wrote
    (``None`` when there is none it could use, e.g. one of another schema). ``now`` is this
    process's clock; ``last_snapshot_at`` is the database's.
    """

    aggregate: EventSourcedAggregate
    previous_version: int
    version: int
    new_events: tuple[DomainEvent, ...]
    last_snapshot_version: int | None
    last_snapshot_at: dt.datetime | None
    now: dt.datetime

    @property
    def events_since_snapshot(self) -> int:
        """Events after the last usable snapshot, this save's included."""
        return self.version - (self.last_snapshot_version or 0)


class SnapshotPolicy:
    """Decides, for each save, whether it also writes a snapshot. Override ``due()``."""

    def due(self, context: SnapshotContext) -> bool:
        """Whether the save described by ``context`` takes a snapshot of the state after it."""
        raise NotImplementedError

    def __or__(self, other: SnapshotPolicy) -> SnapshotPolicy:
        if not isinstance(other, SnapshotPolicy):
            return NotImplemented
        return AnyOf(self, other)


class EveryNEvents(SnapshotPolicy):
    """Due when a save crosses a multiple of ``events`` (from 95 to 103 with 100, say), so a
    load replays at most ``events - 1`` events plus those of the last save."""

    def __init__(self, events: int) -> None:
        if not isinstance(events, int) or isinstance(events, bool) or events < 1:
            raise TypeError(f"EveryNEvents() needs a positive int, got {events!r}")
        self.events = events

    def due(self, context: SnapshotContext) -> bool:
        return context.version // self.events != context.previous_version // self.events

    def __repr__(self) -> str:
        return f"EveryNEvents({self.events})"


class OnEventTypes(SnapshotPolicy):
    """Due when the save writes an event of one of ``event_classes`` (subclasses included):
    after a period is closed, for instance, when the state is asked for most."""

    def __init__(self, *event_classes: type[DomainEvent]) -> None:
        if not event_classes or not all(
            isinstance(cls, type) and issubclass(cls, DomainEvent) for cls in event_classes
        ):
            raise TypeError(
                f"OnEventTypes() needs one or more DomainEvent subclasses, got {event_classes!r}"
            )
        self.event_classes = event_classes

    def due(self, context: SnapshotContext) -> bool:
        return any(isinstance(event, self.event_classes) for event in context.new_events)

    def __repr__(self) -> str:
        return f"OnEventTypes({', '.join(cls.__qualname__ for cls in self.event_classes)})"


class TimeSinceLastSnapshot(SnapshotPolicy):
    """Due when the last usable snapshot is at least ``interval`` old, or there is none: at
    most one snapshot per interval for an aggregate saved often, whatever its event count."""

    def __init__(self, interval: dt.timedelta) -> None:
        if not isinstance(interval, dt.timedelta) or interval <= dt.timedelta(0):
            raise TypeError(f"TimeSinceLastSnapshot() needs a positive timedelta, got {interval!r}")
        self.interval = interval

    def due(self, context: SnapshotContext) -> bool:
        if context.last_snapshot_at is None:
            return True
        return context.now - context.last_snapshot_at >= self.interval

    def __repr__(self) -> str:
        return f"TimeSinceLastSnapshot({self.interval!r})"


class AnyOf(SnapshotPolicy):
    """Due when any of ``policies`` is; what ``a | b`` builds."""

    def __init__(self, *policies: SnapshotPolicy) -> None:
        if not policies or not all(isinstance(p, SnapshotPolicy) for p in policies):
            raise TypeError(f"AnyOf() needs SnapshotPolicy objects, got {policies!r}")
        self.policies = tuple(_flattened(policies))

    def due(self, context: SnapshotContext) -> bool:
        return any(policy.due(context) for policy in self.policies)

    def __repr__(self) -> str:
        return " | ".join(repr(policy) for policy in self.policies)


def _flattened(policies: tuple[SnapshotPolicy, ...]) -> Iterator[SnapshotPolicy]:
    for policy in policies:
        if isinstance(policy, AnyOf):
            yield from policy.policies
        else:
            yield policy
