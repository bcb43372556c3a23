"""Events to JSON and back, under their stable ``event_type`` names.

``event_id`` and ``occurred_at`` are stored in their own columns; the other dataclass fields
form the JSON ``data``. Reading converts JSON strings back to the field's declared type for
the types JSON cannot carry (UUID, Decimal, datetime, date, time, timedelta), also inside
``X | None``, ``list[X]``, ``tuple[X, ...]``; other values are passed through as JSON gives
them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import types
import typing
from decimal import Decimal
from typing import Any
from uuid import UUID

from django.utils.dateparse import parse_date, parse_datetime, parse_duration, parse_time

from domain_events.events import DomainEvent, event_class_for
from domain_events.eventsourcing.exceptions import SerializationError
from outbox.common.jsontext import encode

_BASE_FIELDS = frozenset({"event_id", "occurred_at"})


def to_json_text(value: Any, *, what: str) -> str:
    """``value`` as compact JSON text that jsonb accepts, or ``SerializationError``.

    The same encoding as outbox payloads (``outbox.common.jsontext.encode``), so an event's data
    and the integration event made from it agree on dates, decimals and UUIDs.
    """
    try:
        return encode(value)
    except (TypeError, ValueError) as error:
        raise SerializationError(f"{what} cannot be stored as JSON: {error}") from error


def event_data(event: DomainEvent) -> dict[str, Any]:
    """The data of ``event``: every field but ``event_id`` and ``occurred_at``, not encoded."""
    return {name: getattr(event, name) for name in _field_types(type(event))}


def event_json(event: DomainEvent) -> str:
    """The JSON data of ``event`` as text: every field but ``event_id`` and ``occurred_at``."""
    return to_json_text(event_data(event), what=f"{event.event_type} event")


def event_from_data(
    event_type: str, data: dict[str, Any], *, event_id: UUID, occurred_at: dt.datetime
) -> DomainEvent:
    """Rebuild the event registered as ``event_type`` from its (current-schema) JSON data."""
    try:
        cls = event_class_for(event_type)
    except KeyError as error:
        raise SerializationError(
            f"stored event type {event_type!r} has no DomainEvent class; import the module"
            " that defines it (or register an event_type= alias for a renamed class)"
        ) from error
    hints = _field_types(cls)
    unknown = set(data) - set(hints)
    if unknown:
        raise SerializationError(
            f"stored {event_type} data has fields {sorted(unknown)} that {cls.__qualname__} does"
            " not declare; register an upcaster for the schema change"
        )
    values = {name: _decode(hints[name], value) for name, value in data.items()}
    try:
        return cls(event_id=event_id, occurred_at=occurred_at, **values)
    except TypeError as error:
        raise SerializationError(
            f"stored {event_type} data does not fit {cls.__qualname__}: {error}"
        ) from error


_field_types_cache: dict[type[DomainEvent], dict[str, Any]] = {}


def _field_types(cls: type[DomainEvent]) -> dict[str, Any]:
    types_by_name = _field_types_cache.get(cls)
    if types_by_name is None:
        hints = typing.get_type_hints(cls)
        types_by_name = {
            field.name: hints.get(field.name, Any)
            for field in dataclasses.fields(cls)
            if field.name not in _BASE_FIELDS
        }
        _field_types_cache[cls] = types_by_name
    return types_by_name


def _decode(annotation: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for member in typing.get_args(annotation):
            if member is not type(None):
                try:
                    return _decode(member, value)
                except (TypeError, ValueError):
                    continue
        return value
    if origin in (list, tuple, set, frozenset) and isinstance(value, list):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        item_type = args[0] if args else Any
        return origin(_decode(item_type, item) for item in value)
    parser = _PARSERS.get(annotation)
    if parser is not None and isinstance(value, str):
        parsed = parser(value)
        if parsed is None:
            raise ValueError(f"{value!r} is not a valid {annotation.__name__}")
        return parsed
    if annotation is Decimal and isinstance(value, int | float):
        return Decimal(str(value))
    return value


_PARSERS: dict[Any, typing.Callable[[str], Any]] = {
    UUID: UUID,
    Decimal: Decimal,
    dt.datetime: parse_datetime,
    dt.date: parse_date,
    dt.time: parse_time,
    dt.timedelta: parse_duration,
}
