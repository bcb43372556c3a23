"""What every ``outbox_*`` management command shares, so that they behave as one tool.

- **Verbosity**: ``-v 0`` prints errors only, ``-v 1`` (the default) what the command did,
  ``-v 2`` adds a line per batch. It also sets the level of the ``outbox`` logger for the run.
- **Logging on the console**: the long-running commands (``outbox_relay``, ``outbox_consume``)
  show the ``outbox`` logger on stderr, as a Celery worker does, when the project configured
  no handler for it; a project's own ``LOGGING`` is left alone.
- **Unreachable services**: a database or RabbitMQ that cannot be reached ends the command with
  a one-line ``CommandError`` naming the host and port (never the password), exit status
  ``EXIT_DATABASE_UNAVAILABLE`` (4) or ``EXIT_BROKER_UNAVAILABLE`` (5), instead of a traceback.
- **Messages**: lower case, no final period, counts with their noun (``3 messages``).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TextIO

import pika.exceptions
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import InterfaceError, OperationalError, connections

from outbox.broker import broker_address
from outbox.common.database import is_postgresql, outbox_alias
from outbox.common.words import count

__all__ = [
    "EXIT_BROKER_UNAVAILABLE",
    "EXIT_DATABASE_UNAVAILABLE",
    "OutboxCommand",
    "add_noinput_argument",
    "broker_address",
    "count",
    "database_address",
    "database_error_reason",
    "database_unavailable_message",
    "stop_on_signals",
    "warn_unless_postgresql",
]

# Shared by every command, and by outbox_status's health-check bits (1 and 2 are its own).
EXIT_DATABASE_UNAVAILABLE = 4
EXIT_BROKER_UNAVAILABLE = 5

# Relay log events that happen once per batch: shown from -v 2 on the console.
PER_BATCH_EVENTS = frozenset({"claim", "publish"})
CONSOLE_FORMAT = "[%(asctime)s %(levelname)s %(name)s] %(message)s"

_LEVEL_BY_VERBOSITY = {0: logging.ERROR, 1: logging.INFO}
_DEFAULT_PORTS = {"postgresql": "5432", "mysql": "3306"}


class OutboxCommand(BaseCommand):
    """Base of the ``outbox_*`` commands; see the module docstring for what it adds."""

    #: Show the ``outbox`` logger on stderr when the project configured no handler.
    console_logging = False

    verbosity = 1

    def execute(self, *args: Any, **options: Any) -> Any:
        self.verbosity = int(options.get("verbosity", 1))
        stream = options.get("stderr") or sys.stderr
        with _command_logging(stream, self.verbosity, attach=self.console_logging):
            try:
                return super().execute(*args, **options)
            except (OperationalError, InterfaceError) as error:
                raise CommandError(
                    database_unavailable_message(error), returncode=EXIT_DATABASE_UNAVAILABLE
                ) from error
            except pika.exceptions.AMQPConnectionError as error:
                raise CommandError(
                    f"cannot connect to RabbitMQ at {broker_address()}: {_first_line(error)}",
                    returncode=EXIT_BROKER_UNAVAILABLE,
                ) from error
            except ImproperlyConfigured as error:
                # A setting the system checks could not judge before the run (BROKER_URL
                # unset: outbox.W001 is only a warning, since writing rows needs no broker).
                raise CommandError(str(error)) from error

    def say(self, message: str, *, verbosity: int = 1) -> None:
        """Write ``message`` on stdout from verbosity ``verbosity`` on."""
        if self.verbosity >= verbosity:
            self.stdout.write(message)
            self.stdout.flush()


def stop_on_signals() -> threading.Event:
    """An event set on SIGTERM or SIGINT. The long-running commands' loops finish the work
    in hand (a batch, a job) and settle it before they exit."""
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return stop


def warn_unless_postgresql(
    logger: logging.Logger, table: str, consequence: str, alias: str | None = None, **extra: Any
) -> None:
    """Warn that ``table`` is not on PostgreSQL, so ``consequence`` (no ``SKIP LOCKED``: one
    process only); fine for development only."""
    if not is_postgresql(alias):
        logger.warning(
            "%s is not on PostgreSQL: %s; fine for development only",
            table,
            consequence,
            extra={"event": "not_postgresql", **extra},
        )


def add_noinput_argument(parser: CommandParser, *, what: str) -> None:
    """Django's ``--noinput`` / ``--no-input``, with ``--yes`` kept as an older alias."""
    parser.add_argument(
        "--noinput",
        "--no-input",
        "--yes",
        action="store_false",
        dest="interactive",
        help=f"{what} without asking for confirmation (--yes is an older spelling)",
    )


def database_address(alias: str | None = None) -> str:
    """Where database ``alias`` (default: the outbox's) lives, for messages: ``host:port``
    and the database name; never the user or password."""
    connection = connections[outbox_alias(alias)]
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"SQLite file {settings.get('NAME')}"
    host = settings.get("HOST") or "localhost"
    port = settings.get("PORT") or _DEFAULT_PORTS.get(connection.vendor, "")
    return f"{host}:{port} (database {settings.get('NAME')!r})"


def database_unavailable_message(error: Exception, alias: str | None = None) -> str:
    """A one-line account of a database error: which database, and why."""
    return f"cannot use the database at {database_address(alias)}: {database_error_reason(error)}"


def database_error_reason(error: Exception, alias: str | None = None) -> str:
    """The first line of a database error, with the configured password (if any) masked."""
    password = str(connections[outbox_alias(alias)].settings_dict.get("PASSWORD") or "")
    reason = _first_line(error)
    return reason.replace(password, "***") if password else reason


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0].strip()


@contextmanager
def _command_logging(stream: TextIO, verbosity: int, *, attach: bool) -> Iterator[None]:
    """For the command's run: the ``outbox`` logger's level follows ``verbosity`` and, if
    ``attach`` and nothing would show its records, a console handler is added."""
    logger = logging.getLogger("outbox")
    level = _LEVEL_BY_VERBOSITY.get(verbosity, logging.DEBUG)
    saved_level = logger.level
    handler: logging.Handler | None = None
    if attach and not logger.hasHandlers():
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter(CONSOLE_FORMAT))
        if verbosity < 2:
            handler.addFilter(_not_per_batch)
        logger.addHandler(handler)
        logger.setLevel(level)
    elif verbosity != 1:
        # The project's LOGGING decides at the default verbosity; -v 0 and -v 2 are asked for.
        logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(saved_level)
        if handler is not None:
            logger.removeHandler(handler)


def _not_per_batch(record: logging.LogRecord) -> bool:
    return getattr(record, "event", None) not in PER_BATCH_EVENTS
