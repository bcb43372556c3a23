"""System checks of the domain-events layer: ``settings.DOMAIN_EVENTS`` is validated by
``manage.py check`` instead of by the first save that dispatches events, and a database the
event store cannot use is named at start-up instead of by its first query."""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error
from django.core.checks import Warning as CheckWarning
from django.core.exceptions import ImproperlyConfigured

from domain_events import conf


def check_settings(**kwargs: Any) -> list[CheckMessage]:
    """domain_events.E001: ``DOMAIN_EVENTS`` is not a dict, has an unknown key (a typo), or a
    value of the wrong type or range."""
    try:
        conf.max_cascade_depth()
    except ImproperlyConfigured as error:
        return [Error(str(error), hint="known keys: MAX_CASCADE_DEPTH", id="domain_events.E001")]
    return []


def check_event_store_database(**kwargs: Any) -> list[CheckMessage]:
    """domain_events.W001: a database that gets the event store's tables is not PostgreSQL,
    so ``EventStore`` and projections raise ``UnsupportedDatabaseError`` there."""
    from django.db import connections, router

    from domain_events.eventsourcing.database import unsupported_message
    from domain_events.models import StoredEvent

    return [
        CheckWarning(
            unsupported_message(alias, connections[alias].vendor),
            hint="use PostgreSQL 14+ for event-sourced aggregates; if this project uses none,"
            ' silence the check with SILENCED_SYSTEM_CHECKS = ["domain_events.W001"]',
            id="domain_events.W001",
        )
        for alias in connections
        if router.allow_migrate_model(alias, StoredEvent)
        and connections[alias].vendor != "postgresql"
    ]
