"""Kick on commit: send the relay task as soon as a transaction that wrote outbox rows commits.

With Celery beat alone a row waits for the next beat run (half the interval on average). With
the kick, ``publish()`` registers one ``transaction.on_commit`` callback per transaction; after
the commit it wakes this process's kick sender, a daemon thread that sends
``outbox.tasks.publish_outbox`` to Celery's broker. Beat stays the safety net: a kick that is
lost (process killed, broker down, worker busy) costs latency, never a message.

What the business transaction pays: one look at the connection's on-commit list and, after
the commit, setting an event. Sending happens on the kick thread, so a slow or unreachable
Celery broker never slows or breaks the caller. A failed send is logged once; the kick
thread then tries again every ``RETRY_AFTER_SECONDS`` without logging, and logs when a send
works again.

Kicks coalesce: at most one is pending per process. Commits that arrive while a kick is being
sent, or within ``MIN_INTERVAL_SECONDS`` after one, are served by a single next kick, so a
burst of thousands of commits sends a few tasks, not thousands. A kick carries the time it
was sent (``kicked_at``); the task skips a kick that a drain in the same worker process has
already covered (see ``outbox.tasks.publish_outbox``).

Local jobs (``outbox.jobs``, durable after-commit handlers) are kicked the same way, by a
kicker of their own that sends ``outbox.tasks.run_jobs``: ``after_commit(alias, JOBS)``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from collections.abc import Callable

from django.db import transaction

from outbox import conf

__all__ = [
    "EXPIRES_SECONDS",
    "JOBS",
    "MIN_INTERVAL_SECONDS",
    "RELAY",
    "RETRY_AFTER_SECONDS",
    "Kicker",
    "after_commit",
    "celery_configured",
    "enabled",
    "jobs_kicker",
    "kicker",
]

logger = logging.getLogger("outbox.relay")

# Two kicks from one process are at least this far apart. At 200 commits/s a kick per commit
# would cost a worker one drain per commit; 20 ms bounds a process to 50 tasks/s while adding
# at most 20 ms (10 ms on average) to the commits that fall inside the window. Measured at
# 200 tx/s, 10 ms and 20 ms gave the same latency within the noise; 20 ms sends half the tasks.
MIN_INTERVAL_SECONDS = 0.02
# After a send fails (Celery's broker unreachable), no kick is tried for this long.
RETRY_AFTER_SECONDS = 5.0
# A kick no worker took within this long is dropped on receipt: by then beat has run, and a
# pile of stale kicks after a worker outage would otherwise each cost a claim.
EXPIRES_SECONDS = 10.0

Send = Callable[[float], None]

# What a kick wakes: the relay (publish_outbox) or the local-job runner (run_jobs).
RELAY = "relay"
JOBS = "jobs"


class Kicker:
    """One process's kick sender: ``request()`` from any thread, ``send(kicked_at)`` on the
    kicker's own daemon thread, started at the first request."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._wanted = threading.Event()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # Kicks sent by this process, and sends that failed: for tests and benchmarks.
        self.sent = 0
        self.failures = 0

    def request(self) -> None:
        """Ask for a kick. Never blocks on I/O and never raises."""
        self._wanted.set()
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="outbox-kick", daemon=True
                    )
                    self._thread.start()

    def _run(self) -> None:
        failing = False
        while True:
            self._wanted.wait()
            # Cleared before sending: a commit from here on asks for the next kick, and a
            # commit before it is covered by this one (its task claims after this send).
            self._wanted.clear()
            started = time.monotonic()
            try:
                self._send(time.time())
            except Exception as error:  # the kick is an optimisation: nothing may escape
                self.failures += 1
                if not failing:
                    logger.warning(
                        "kick on commit: cannot send publish_outbox (%s); beat publishes"
                        " meanwhile, kicks retry every %.0f s and are not logged until one"
                        " is sent",
                        error,
                        RETRY_AFTER_SECONDS,
                        extra={"event": "kick_failed"},
                    )
                failing = True
                time.sleep(RETRY_AFTER_SECONDS)
                self._wanted.set()  # the commits that asked are still unpublished
                continue
            self.sent += 1
            if failing:
                logger.info("kick on commit: sending again", extra={"event": "kick_resumed"})
                failing = False
            pause = started + MIN_INTERVAL_SECONDS - time.monotonic()
            if pause > 0:
                time.sleep(pause)


def send_task(kicked_at: float) -> None:
    """Send ``publish_outbox`` through the project's Celery app, without Celery's retries:
    the next commit (or beat) tries again."""
    from outbox.tasks import publish_outbox

    publish_outbox.apply_async(
        kwargs={"kicked_at": kicked_at}, expires=EXPIRES_SECONDS, retry=False
    )


def send_jobs_task(kicked_at: float) -> None:
    """Send ``run_jobs`` as ``send_task`` sends ``publish_outbox``."""
    from outbox.tasks import run_jobs

    run_jobs.apply_async(kwargs={"kicked_at": kicked_at}, expires=EXPIRES_SECONDS, retry=False)


_kicker = Kicker(send_task)
_jobs_kicker = Kicker(send_jobs_task)
_celery_ready: bool | None = None


def kicker() -> Kicker:
    """This process's kicker of the relay."""
    return _kicker


def jobs_kicker() -> Kicker:
    """This process's kicker of the local-job runner."""
    return _jobs_kicker


def _renew_after_fork() -> None:
    # A forked child (a gunicorn or Celery prefork worker) has no kick thread and may have
    # inherited locks held by a thread of the parent: it starts over with its own kicker.
    global _kicker, _jobs_kicker
    _kicker = Kicker(_kicker._send)
    _jobs_kicker = Kicker(_jobs_kicker._send)


os.register_at_fork(after_in_child=_renew_after_fork)


def enabled() -> bool:
    """``OUTBOX["KICK_ON_COMMIT"]``, or when it is ``None``: is Celery installed and configured
    (its current app has a broker URL)? Without a broker URL Celery would fall back to AMQP on
    localhost, which is not what anyone configured."""
    setting = conf.get_optional_bool("KICK_ON_COMMIT")
    if setting is not None:
        return setting
    global _celery_ready
    if _celery_ready is None:
        _celery_ready = celery_configured()
    return _celery_ready


def celery_configured() -> bool:
    """Is Celery importable, with a broker URL on its current app?"""
    if importlib.util.find_spec("celery") is None:
        return False
    from celery import current_app

    return bool(current_app.conf.broker_url or current_app.conf.broker_write_url)


def after_commit(alias: str, target: str = RELAY) -> None:
    """Kick the relay (``target`` ``RELAY``) or the local-job runner (``JOBS``) once the
    current transaction on ``alias`` commits (at once outside a transaction). One callback per
    transaction and target, however many rows it writes: a callback dropped with a
    rolled-back savepoint is registered again by the next write."""
    if target not in (RELAY, JOBS):
        raise ValueError(f"after_commit(): target must be RELAY or JOBS, got {target!r}")
    request = _request if target == RELAY else _request_jobs
    connection = transaction.get_connection(alias)
    if connection.in_atomic_block and any(
        entry[1] is request for entry in connection.run_on_commit
    ):
        return
    transaction.on_commit(request, using=alias, robust=True)


def _request() -> None:
    _kicker.request()


def _request_jobs() -> None:
    _jobs_kicker.request()
