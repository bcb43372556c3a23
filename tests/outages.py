"""A database outage confined to one database, for tests of what the relay and the consumer do
while PostgreSQL is unreachable.

Stopping the PostgreSQL server would break every other test run on this machine (they share
it), so the outage is made on the test's own database only: new connections to it are refused
(``ALLOW_CONNECTIONS false``, which binds superusers too) and the open ones are terminated.
The database is opened again in ``finally``, whatever happens inside the block.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from django.db import connections
from psycopg import sql

ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(ADMIN_DSN, autocommit=True)


def _refuse_connections(database: str) -> None:
    with _admin() as admin:
        admin.execute(
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(
                sql.Identifier(database)
            )
        )
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            [database],
        )


def _accept_connections(database: str) -> None:
    with _admin() as admin:
        admin.execute(
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(
                sql.Identifier(database)
            )
        )
    # This thread's Django connections were terminated: close them so that the next query
    # (the test's own teardown included) reconnects instead of failing.
    connections.close_all()


@contextmanager
def database_down(database: str) -> Iterator[None]:
    """``database`` refuses connections (and has none open) for the duration of the block."""
    try:
        _refuse_connections(database)
        yield
    finally:
        _accept_connections(database)


@contextmanager
def database_down_later(database: str, *, after: float, for_seconds: float) -> Iterator[None]:
    """In the background: ``after`` seconds into the block, ``database`` goes down for
    ``for_seconds``. Leaving the block waits for the outage to end and always reopens it.
    Connections of the block's own thread stay broken until closed (Django: ``connections
    [alias].close()``, which the relay and the consumer do themselves on a database error)."""
    done = threading.Event()

    def outage() -> None:
        try:
            if done.wait(after):
                return
            _refuse_connections(database)
            done.wait(for_seconds)
        finally:
            _accept_connections(database)

    worker = threading.Thread(target=outage, name="database-outage", daemon=True)
    started = time.monotonic()
    worker.start()
    try:
        yield
    finally:
        # Let a started outage run its full length unless the block already outlasted it.
        if time.monotonic() - started < after:
            done.set()
        worker.join(timeout=after + for_seconds + 30)
        _accept_connections(database)
