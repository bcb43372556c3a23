"""``ReadyListener``: wakes the relay when outbox rows commit (PostgreSQL LISTEN/NOTIFY)."""

from __future__ import annotations

import time
from typing import Any

import psycopg
from django.db import DatabaseError, connections

from outbox.common.database import is_postgresql, outbox_alias

__all__ = ["NOTIFY_CHANNEL", "ReadyListener"]

# The channel the AFTER INSERT trigger of migration 0001_initial notifies.
NOTIFY_CHANNEL = "outbox_message_ready"


class ReadyListener:
    """A dedicated autocommit connection LISTENing for "rows committed" notifications.

    Django's own connection cannot LISTEN for us (it may sit in a transaction, and Django
    does not expose notifications), so this one is opened from the same settings. Other
    databases have no notifications: there ``wait`` only sleeps, and the relay polls.
    """

    def __init__(self, using: str | None = None) -> None:
        self._alias = outbox_alias(using)
        self._connection: psycopg.Connection[Any] | None = None
        self._listens = is_postgresql(self._alias)

    @property
    def listening(self) -> bool:
        """Whether a commit from now on wakes ``wait``: on PostgreSQL, once ``wait`` opened
        the LISTEN connection (and until it is lost)."""
        return self._listens and self._connection is not None and not self._connection.closed

    def wait(self, timeout: float) -> bool:
        """Block until a notification arrives (True) or ``timeout`` seconds pass (False).

        Notifications that arrived while the caller was busy are returned at once. Raises
        Django's ``DatabaseError`` when the connection is lost; the next call reconnects.
        Without PostgreSQL it only sleeps ``timeout`` seconds and returns False.
        """
        if not self._listens:
            time.sleep(timeout)
            return False
        try:
            connection = self._connect()
            received = False
            for _ in connection.notifies(timeout=timeout, stop_after=1):
                received = True
            # Drain whatever else is already buffered: one wake-up covers them all.
            for _ in connection.notifies(timeout=0):
                pass
            return received
        except psycopg.Error as error:
            self.close()
            raise DatabaseError(f"the relay's LISTEN connection failed: {error}") from error

    def close(self) -> None:
        """Close the listening connection (the next ``wait`` opens a new one)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _connect(self) -> psycopg.Connection[Any]:
        if self._connection is None or self._connection.closed:
            params = connections[self._alias].get_connection_params()
            params.pop("cursor_factory", None)
            params.pop("context", None)
            params["application_name"] = "outbox-relay-listener"
            connection = psycopg.connect(**params, autocommit=True)
            connection.execute(f"LISTEN {NOTIFY_CHANNEL}")
            self._connection = connection
        return self._connection
