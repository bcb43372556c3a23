"""``EventSourcedAggregate``: a plain-Python aggregate whose state is the fold of its events.

Commands check the current state and ``record()`` events; ``record()`` applies each event at
once (through the method decorated ``@applies(EventClass)``) and keeps it pending until the
store saves it. Loading replays the stored events through the same methods, so the state after
a command and the state after reloading are the same by construction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar
from uuid import UUID

from domain_events.events import DomainEvent
from domain_events.eventsourcing.exceptions import InvalidAggregateError
from domain_events.eventsourcing.snapshots import EveryNEvents, SnapshotPolicy
from domain_events.names import StableNames
from outbox import wire
from outbox.exceptions import InvalidMessageError

_APPLIES_ATTRIBUTE = "_domain_events_applies"

ApplyMethod = TypeVar("ApplyMethod", bound=Callable[..., None])

_aggregate_types: StableNames[type[EventSourcedAggregate]] = StableNames(
    "aggregate type", "aggregate_type", TypeError
)


def applies(event_class: type[DomainEvent]) -> Callable[[ApplyMethod], ApplyMethod]:
    """Mark an aggregate method as the one that applies ``event_class`` to the state.

    Apply methods only mutate state; they never check rules or raise for business reasons,
    because they also run when old events are replayed.
    """
    if not (isinstance(event_class, type) and issubclass(event_class, DomainEvent)):
        raise TypeError(f"@applies needs a DomainEvent subclass, got {event_class!r}")

    def mark(method: ApplyMethod) -> ApplyMethod:
        setattr(method, _APPLIES_ATTRIBUTE, event_class)
        return method

    return mark


class EventSourcedAggregate:
    """Base class of event-sourced aggregates (plain Python, not a Django model).

    Class options, as class keywords or attributes:

    - ``aggregate_type`` (class keyword, default the class name): the stable name stored with
      each event; keep it when renaming the class.
    - ``snapshot_every`` (default ``None``): shorthand for the default policy,
      ``snapshot_policy = EveryNEvents(snapshot_every)``: a snapshot whenever a save crosses a
      multiple of this many events.
    - ``snapshot_policy`` (default ``None``, no snapshots): a ``SnapshotPolicy`` deciding which
      saves also write a snapshot (``domain_events.eventsourcing.snapshots``). Set one or
      ``snapshot_every``, not both. Either needs ``snapshot_state()`` and
      ``restore_snapshot()``.
    - ``publish_stored_events`` (default False): when True, each save also writes every
      stored event to the outbox, in the same transaction, as an integration event (routing
      key the event type; ``domain_events.eventsourcing.publishing`` has the format).
    - ``snapshot_schema_version`` (default 1): raise it whenever ``snapshot_state()`` changes
      shape; older snapshots are then ignored and the aggregate is rebuilt from its events.

    Subclasses that define ``__init__`` must accept the aggregate id as the only positional
    argument and call ``super().__init__(aggregate_id)``: loading creates the instance that way
    before replaying the events.
    """

    aggregate_type: ClassVar[str] = "EventSourcedAggregate"
    snapshot_every: ClassVar[int | None] = None
    snapshot_policy: ClassVar[SnapshotPolicy | None] = None
    snapshot_schema_version: ClassVar[int] = 1
    publish_stored_events: ClassVar[bool] = False
    _apply_methods: ClassVar[dict[type[DomainEvent], str]] = {}

    def __init_subclass__(cls, *, aggregate_type: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = aggregate_type if aggregate_type is not None else cls.__name__
        try:
            cls.aggregate_type = wire.check_aggregate_type(name)
        except InvalidMessageError as error:
            raise InvalidAggregateError(f"{cls.__qualname__}: {error}") from error
        methods = dict(cls._apply_methods)
        for attribute, value in vars(cls).items():
            event_class = getattr(value, _APPLIES_ATTRIBUTE, None)
            if event_class is not None:
                methods[event_class] = attribute
        cls._apply_methods = methods
        if not isinstance(cls.publish_stored_events, bool):
            raise TypeError(f"{cls.__qualname__}.publish_stored_events must be True or False")
        cls.snapshot_policy = _snapshot_policy(cls)
        if cls.snapshot_policy is not None and (
            cls.snapshot_state is EventSourcedAggregate.snapshot_state
            or cls.restore_snapshot is EventSourcedAggregate.restore_snapshot
        ):
            raise TypeError(
                f"{cls.__qualname__} takes snapshots ({cls.snapshot_policy!r}), so it must"
                " define snapshot_state() and restore_snapshot()"
            )
        # Two classes reading one stream would replay each other's events with the wrong
        # apply methods.
        _aggregate_types.claim(name, cls)

    def __init__(self, aggregate_id: str | int | UUID) -> None:
        try:
            #: The id as stored: always its string form.
            self.id = wire.check_aggregate_id(aggregate_id)
        except InvalidMessageError as error:
            raise InvalidAggregateError(f"{type(self).__qualname__}: {error}") from error
        self._stored_version = 0
        self._pending: list[DomainEvent] = []
        # The usable snapshot this instance was loaded from or last wrote, for the policy.
        self._snapshot_version: int | None = None
        self._snapshot_taken_at: dt.datetime | None = None

    @property
    def version(self) -> int:
        """The number of events in this aggregate's stream, pending ones included."""
        return self._stored_version + len(self._pending)

    @property
    def stored_version(self) -> int:
        """The version as last loaded or saved: the version a save expects to still be current."""
        return self._stored_version

    @property
    def pending_events(self) -> tuple[DomainEvent, ...]:
        """Events recorded since the last load or save, oldest first."""
        return tuple(self._pending)

    def record(self, event: DomainEvent) -> None:
        """Apply ``event`` to the state and keep it pending until the next save."""
        self._apply(event)
        self._pending.append(event)

    def snapshot_state(self) -> dict[str, Any]:
        """The state as JSON data, for a snapshot. Override with ``snapshot_every``."""
        raise NotImplementedError(f"{type(self).__qualname__} does not take snapshots")

    def restore_snapshot(self, state: dict[str, Any]) -> None:
        """Set the state from ``snapshot_state()``'s data. Override with ``snapshot_every``."""
        raise NotImplementedError(f"{type(self).__qualname__} does not take snapshots")

    def _apply(self, event: DomainEvent) -> None:
        method_name = self._apply_methods.get(type(event))
        if method_name is None:
            raise TypeError(
                f"{type(self).__qualname__} has no @applies({type(event).__qualname__}) method"
            )
        getattr(self, method_name)(event)

    # The store's side of the aggregate; not for commands.

    def _replay(self, event: DomainEvent, version: int) -> None:
        self._apply(event)
        self._stored_version = version

    def _mark_saved(self, count: int) -> None:
        # Only the events that were written: a handler may have recorded more meanwhile.
        self._stored_version += count
        del self._pending[:count]

    def _set_stored_version(self, version: int) -> None:
        self._stored_version = version

    def _note_snapshot(self, version: int, taken_at: dt.datetime) -> None:
        self._snapshot_version = version
        self._snapshot_taken_at = taken_at

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} {self.id} v{self.version}>"


def _snapshot_policy(cls: type[EventSourcedAggregate]) -> SnapshotPolicy | None:
    """The class's policy: its own ``snapshot_policy``, else ``EveryNEvents(snapshot_every)``
    when it sets ``snapshot_every``, else what it inherits."""
    own = vars(cls)
    if "snapshot_policy" in own and "snapshot_every" in own:
        raise TypeError(
            f"{cls.__qualname__} sets both snapshot_every and snapshot_policy; set one"
            " (snapshot_every = N means snapshot_policy = EveryNEvents(N))"
        )
    if "snapshot_policy" in own:
        policy = own["snapshot_policy"]
        if policy is not None and not isinstance(policy, SnapshotPolicy):
            raise TypeError(
                f"{cls.__qualname__}.snapshot_policy must be a SnapshotPolicy or None,"
                f" got {policy!r}"
            )
        return policy
    every = cls.snapshot_every
    if "snapshot_every" in own and every is None:
        return None
    if "snapshot_every" in own:
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise TypeError(f"{cls.__qualname__}.snapshot_every must be a positive int or None")
        return EveryNEvents(every)
    return cls.snapshot_policy
