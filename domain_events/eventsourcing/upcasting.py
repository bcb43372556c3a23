"""Upcasting: stored events of an older schema are converted to the current one when read.

An event type's schema starts at version 1. Each registered upcaster converts the JSON data of
one version to the next (``from_version`` -> ``from_version + 1``), so the current version of a
type is one past its highest registered step. Events are always written at the current version
and read through the chain of steps from their stored version.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from domain_events.eventsourcing.exceptions import UpcastError

EventData = dict[str, Any]
Upcaster = Callable[[EventData], EventData]
UpcasterT = Callable[[EventData], EventData]

_steps: dict[str, dict[int, Upcaster]] = {}


def upcaster(event_type: str, *, from_version: int) -> Callable[[UpcasterT], UpcasterT]:
    """Register the decorated function as the step ``from_version`` -> ``from_version + 1``.

    The function receives the stored data (a dict of the event's fields, without
    ``event_id`` and ``occurred_at``) and returns the data of the next version::

        @upcaster("MoneyDeposited", from_version=1)
        def amount_in_cents(data):
            return {**data, "cents": round(data.pop("amount") * 100)}

    Registering a second function for the same step raises ``ValueError``.
    """
    if not isinstance(event_type, str) or not event_type:
        raise TypeError(f"upcaster() needs the stable event type name, got {event_type!r}")
    if not isinstance(from_version, int) or isinstance(from_version, bool) or from_version < 1:
        raise ValueError(f"from_version must be a positive int, got {from_version!r}")

    def register(func: UpcasterT) -> UpcasterT:
        steps = _steps.setdefault(event_type, {})
        existing = steps.get(from_version)
        if existing is not None and existing is not func:
            raise ValueError(
                f"{event_type} already has an upcaster from version {from_version}:"
                f" {existing.__module__}.{existing.__qualname__}"
            )
        steps[from_version] = func
        return func

    return register


def current_schema_version(event_type: str) -> int:
    """The schema version events of ``event_type`` are written at: 1 + its last upcaster step."""
    steps = _steps.get(event_type)
    return max(steps) + 1 if steps else 1


def upcast(event_type: str, schema_version: int, data: EventData) -> EventData:
    """Bring ``data``, stored at ``schema_version``, to the current schema of ``event_type``."""
    current = current_schema_version(event_type)
    if schema_version > current:
        raise UpcastError(
            f"a stored {event_type} event has schema version {schema_version}, newer than this"
            f" code's {current}: it was written by a newer release"
        )
    steps = _steps.get(event_type, {})
    for version in range(schema_version, current):
        step = steps.get(version)
        if step is None:
            raise UpcastError(
                f"no upcaster for {event_type} from version {version} to {version + 1};"
                f" register one with @upcaster({event_type!r}, from_version={version})"
            )
        data = step(dict(data))
        if not isinstance(data, dict):
            raise UpcastError(
                f"the upcaster of {event_type} from version {version} returned"
                f" {type(data).__name__}, not a dict"
            )
    return data


@contextmanager
def isolated_upcasters() -> Iterator[None]:
    """Within the block, upcasters registered are forgotten afterwards (for tests)."""
    saved = {event_type: dict(steps) for event_type, steps in _steps.items()}
    try:
        yield
    finally:
        _steps.clear()
        _steps.update(saved)
