"""Durable handlers for the job tests, at module level so the runner finds them by name.

They are not registered on import (every test saving a counter would then write jobs): a test
registers the ones it needs inside the ``handlers`` fixture, a subprocess with ``register``.
"""

from __future__ import annotations

import threading

from domain_events import handler
from tests.testapp.models import CounterBumped, LogLine

#: How many more runs of ``flaky`` fail; a test sets it.
failures_left = 0


def log_bump(event: CounterBumped) -> None:
    LogLine.objects.create(text=f"bumped {event.counter_name} by {event.by}")


def flaky(event: CounterBumped) -> None:
    """Writes, then fails while ``failures_left`` is positive: the write must roll back."""
    global failures_left
    LogLine.objects.create(text=f"flaky {event.counter_name}")
    if failures_left > 0:
        failures_left -= 1
        raise ConnectionError(f"payment API unreachable for {event.counter_name}")


slow_started = threading.Event()
slow_release = threading.Event()


def slow(event: CounterBumped) -> None:
    """Writes, then waits until the test lets it finish."""
    LogLine.objects.create(text=f"slow {event.counter_name}")
    slow_started.set()
    slow_release.wait(30)


def register() -> None:
    """Register ``log_bump`` as a durable handler of ``CounterBumped``."""
    handler(CounterBumped, on_commit="durable")(log_bump)
