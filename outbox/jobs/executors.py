"""Which function runs the jobs of each kind. Filled at start-up (an ``AppConfig.ready``), read
by the runner; it imports nothing from Django so any app can register early."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["Executor", "executor_for", "register_executor"]

#: Runs one job: ``executor(name, payload)``. What it writes to the database commits with the
#: job's at-most-once record; an exception it raises is the job's failed attempt.
Executor = Callable[[str, dict[str, Any]], None]

_KIND_PATTERN = re.compile(r"^[a-z][a-z0-9_.]{0,63}$")
_executors: dict[str, Executor] = {}


def register_executor(kind: str, executor: Executor) -> None:
    """Make ``executor`` run the jobs of ``kind`` (1-64 characters: lower-case letters, digits,
    ``_`` and ``.``, e.g. ``"domain_events.handler"``). Registering the same function again is a
    no-op; another function for a registered kind raises ``ValueError``."""
    if not isinstance(kind, str) or not _KIND_PATTERN.match(kind):
        raise ValueError(f"a job kind is 1-64 lower-case letters, digits, '_' or '.', got {kind!r}")
    if not callable(executor):
        raise TypeError(f"register_executor() needs a callable, got {executor!r}")
    existing = _executors.get(kind)
    if existing is not None and existing is not executor:
        raise ValueError(f"job kind {kind!r} already has the executor {existing!r}")
    _executors[kind] = executor


def executor_for(kind: str) -> Executor:
    """The executor of ``kind``, or ``LookupError`` naming what to install."""
    executor = _executors.get(kind)
    if executor is None:
        raise LookupError(
            f"no executor is registered for job kind {kind!r} in this process; is the app"
            " that writes these jobs in INSTALLED_APPS?"
        )
    return executor
