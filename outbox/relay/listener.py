"""``ReadyListener``: wakes the relay when outbox rows commit (PostgreSQL LISTEN/NOTIFY);
``NotificationWatcher``: the same on a thread of its own, for the long-running worker."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from django.db import DatabaseError, connections

from outbox.common.database import is_postgresql, outbox_alias

__all__ = ["NOTIFY_CHANNEL", "NotificationWatcher", "ReadyListener"]

logger = logging.getLogger("outbox.relay")

# The channel the AFTER INSERT trigger of migration 0001_initial notifies.
NOTIFY_CHANNEL = "outbox_message_ready"
# How long the watcher's thread blocks on its connection before looking at its stop flag.
_WATCH_SLICE_SECONDS = 0.25


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


class NotificationWatcher:
    """A ``ReadyListener`` read by a thread of its own, so that the worker can wait for the
    broker's confirms and for committed rows at the same time: each notification (or the
    loss of the connection) sets ``pending`` (or ``error``) and calls ``wake``, which
    interrupts the worker's wait. Without PostgreSQL there is nothing to watch: no thread
    runs and ``listening`` is False (the worker polls).
    """

    def __init__(self, using: str | None, wake: Callable[[], None]) -> None:
        self._listener = ReadyListener(using)
        self._wake = wake
        self._pending = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: DatabaseError | None = None

    @property
    def listening(self) -> bool:
        """Whether a commit from now on sets ``pending`` (the thread runs and listens)."""
        return (
            self._thread is not None
            and self._thread.is_alive()
            and self.error is None
            and self._listener.listening
        )

    def start(self) -> None:
        """LISTEN (in the caller's thread: a connection error raises ``DatabaseError`` here),
        then watch on the thread; a no-op while it runs."""
        if self._thread is not None and self._thread.is_alive():
            return
        self.error = None
        if self._listener.wait(0):  # connects and LISTENs; what is queued already counts
            self._pending.set()
        if not self._listener.listening:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="outbox-relay-listen", daemon=True)
        self._thread.start()

    def take(self) -> bool:
        """Whether rows committed since the last call (notifications or the first LISTEN)."""
        if self._pending.is_set():
            self._pending.clear()
            return True
        return False

    def close(self) -> None:
        """Stop the thread and close the connection (``start`` opens a new one)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._listener.close()

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                received = self._listener.wait(_WATCH_SLICE_SECONDS)
            except DatabaseError as error:
                self.error = error
                self._call_wake()
                return
            if received:
                self._pending.set()
                self._call_wake()

    def _call_wake(self) -> None:
        # Whatever the wake-up raises (a connection closing under it), this thread must
        # keep watching: the worker would otherwise fall back to polling without a word.
        try:
            self._wake()
        except Exception:
            logger.exception("the relay's notification watcher could not wake the worker")
