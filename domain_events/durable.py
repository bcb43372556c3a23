"""Durable after-commit handlers: ``@handler(Event, on_commit="durable")`` as local jobs.

Dispatching writes one job per (event, durable handler) in the dispatching transaction
(``outbox.jobs``): the handler's dotted name and the event in the event store's serialized
form. After the commit the job runner calls ``run_handler_job``, which rebuilds the event
(upcast to the current schema, as the event store reads it) and calls the handler.
"""

from __future__ import annotations

import importlib
import json
from typing import TYPE_CHECKING, Any
from uuid import UUID

from django.utils.dateparse import parse_datetime

from domain_events.events import DomainEvent
from domain_events.eventsourcing.serialization import event_from_data, event_json
from domain_events.eventsourcing.upcasting import current_schema_version, upcast
from domain_events.registry import EventHandler, registry

if TYPE_CHECKING:
    from outbox.jobs.writer import Job

__all__ = ["JOB_KIND", "jobs_for", "run_handler_job"]

#: The ``kind`` of the jobs of durable handlers in ``outbox_job``.
JOB_KIND = "domain_events.handler"


def jobs_for(event: DomainEvent, handler_names: tuple[str, ...]) -> list[Job]:
    """The local jobs that run ``handler_names`` on ``event`` after the commit.

    Raises ``SerializationError`` naming the event type when a field cannot be stored as
    JSON: durable handlers need the event to outlive the process.
    """
    from outbox.jobs.writer import Job  # the outbox's models must be loaded first

    payload = {
        "event_type": event.event_type,
        "schema_version": current_schema_version(event.event_type),
        "event_id": str(event.event_id),
        "occurred_at": event.occurred_at.isoformat(),
        "data": json.loads(event_json(event)),
    }
    key = str(event.event_id)
    return [Job(kind=JOB_KIND, name=name, key=key, payload=payload) for name in handler_names]


def run_handler_job(name: str, payload: dict[str, Any]) -> None:
    """The job executor: rebuild the event of ``payload`` and call the handler ``name``."""
    func = _durable_handler(name)
    occurred_at = parse_datetime(payload["occurred_at"])
    if occurred_at is None:
        raise ValueError(f"job payload has no valid occurred_at: {payload['occurred_at']!r}")
    event = event_from_data(
        payload["event_type"],
        upcast(payload["event_type"], payload["schema_version"], payload["data"]),
        event_id=UUID(payload["event_id"]),
        occurred_at=occurred_at,
    )
    func(event)


def _durable_handler(name: str) -> EventHandler:
    func = registry.durable_handler(name)
    if func is None:
        # Handlers outside an app's ``handlers`` module are registered when their module is
        # imported, which this process may not have done yet.
        module, _, _ = name.rpartition(".")
        while module and func is None:
            try:
                importlib.import_module(module)
            except ImportError:
                module = module.rpartition(".")[0]
                continue
            func = registry.durable_handler(name)
            break
    if func is None:
        raise LookupError(
            f"no durable handler is registered as {name!r}: was it renamed, or is its"
            ' @handler(..., on_commit="durable") gone?'
        )
    return func
