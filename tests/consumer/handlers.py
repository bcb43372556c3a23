"""Integration handlers of the test consumer ``recorder``; the payload says how to behave.

Every run first writes a ``LogLine`` with the message id, so a test sees whether (and how
often) a run's transaction committed.
"""

import time
from pathlib import Path

from django.db import DatabaseError, connection

from outbox import IncomingMessage, integration_handler, publish
from tests.testapp.models import Counter, LogLine

RECORDER = "recorder"


class HandlerFailedError(Exception):
    """Raised on purpose by the test handler."""


@integration_handler("test.#", consumer=RECORDER)
def record(message: IncomingMessage) -> None:
    payload = message.payload
    LogLine.objects.create(text=message.message_id)
    if "pause_file" in payload:
        # The first run announces itself and then hangs, so a test can kill the process with
        # the transaction open; the run after the restart finds the file and goes on.
        pause_file = Path(payload["pause_file"])
        if not pause_file.exists():
            pause_file.write_text(message.message_id)
            time.sleep(payload.get("pause_seconds", 60))
    if payload.get("kill_connection"):
        # The transaction's own backend ends while the database stays up for everyone else.
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    if payload.get("time_out"):
        # An OperationalError on a connection that still works: the message's failure.
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL statement_timeout = '10ms'")
            cursor.execute("SELECT pg_sleep(1)")
    if payload.get("swallow_error"):
        # A handler that catches a database error without a savepoint of its own: PostgreSQL
        # aborts the transaction, whose COMMIT would then roll back without an error.
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1/0")
        except DatabaseError:
            pass
    if "sleep" in payload:
        time.sleep(payload["sleep"])
    if "counter" in payload:
        # Saving the aggregate dispatches its domain events in this transaction.
        counter = Counter.objects.create(name=payload["counter"])
        counter.bump()
        counter.save()
        publish("test.recorded", {"message_id": message.message_id})
    if message.attempt <= payload.get("fail_attempts", 0):
        raise HandlerFailedError(f"failing on purpose on attempt {message.attempt}")
