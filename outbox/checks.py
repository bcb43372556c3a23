"""System checks (``manage.py check``), with stable IDs users can silence one by one."""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error
from django.core.checks import Warning as CheckWarning
from django.core.exceptions import ImproperlyConfigured
from django.db import router

from outbox import conf


def check_settings(**kwargs: Any) -> list[CheckMessage]:
    """outbox.E001: an invalid OUTBOX setting; outbox.E002: an unknown key (a typo);
    outbox.W001: no BROKER_URL, so the relay and consumers cannot connect."""
    problems: list[CheckMessage] = []
    try:
        unknown = conf.unknown_keys()
    except ImproperlyConfigured as error:
        return [Error(str(error), id="outbox.E001")]
    for key in unknown:
        problems.append(
            Error(
                f"settings.OUTBOX has an unknown key {key!r}",
                hint=f"known keys: {', '.join(sorted(conf.SETTINGS))}",
                id="outbox.E002",
            )
        )
    for name in conf.SETTINGS:
        try:
            conf.get(name)
        except ImproperlyConfigured as error:
            problems.append(Error(str(error), id="outbox.E001"))
    if not problems and not conf.get("BROKER_URL"):
        problems.append(
            CheckWarning(
                'settings.OUTBOX["BROKER_URL"] is not set: messages are written to the outbox'
                " but the relay and consumers cannot connect to RabbitMQ",
                hint='e.g. OUTBOX = {"BROKER_URL": "amqp://guest:guest@127.0.0.1:5672/%2F"}',
                id="outbox.W001",
            )
        )
    return problems


def check_database(**kwargs: Any) -> list[CheckMessage]:
    """outbox.W002: the outbox table lives on a database that is not PostgreSQL."""
    from django.db import connections

    from outbox.common.database import is_postgresql
    from outbox.models import OutboxMessage

    alias = router.db_for_write(OutboxMessage)
    if is_postgresql(alias):
        return []
    vendor = connections[alias].vendor
    return [
        CheckWarning(
            f"the outbox table is on a {vendor} database ({alias!r}); the outbox is built for"
            " PostgreSQL",
            hint="fine for development with a single relay: without PostgreSQL there is no"
            " SKIP LOCKED (run one relay only, never several), no LISTEN/NOTIFY (the relay polls"
            " every POLL_INTERVAL_SECONDS) and throughput is low; per-aggregate order holds on"
            " SQLite, which serializes writers, but not with concurrent writers elsewhere"
            " (see docs/concepts.md)",
            id="outbox.W002",
        )
    ]
