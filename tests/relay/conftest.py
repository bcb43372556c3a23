"""Helpers for the relay tests: fast relay settings, a private exchange wired into
``settings.OUTBOX``, bulk reading of a queue, and relay subprocesses on the test database."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from outbox.relay import Relay, RelaySettings
from outbox.relay.publishers import InMemoryPublisher
from tests.broker import BoundQueue, Received

REPO_ROOT = Path(__file__).resolve().parents[2]

FAST = RelaySettings(
    batch_size=500,
    lease_seconds=30,
    confirm_timeout=10,
    max_attempts=3,
    backoff_seconds=0,
    backoff_max_seconds=0,
    poll_interval=0.2,
    reconnect_backoff_max=0.5,
)


def fast_settings(**changes: Any) -> RelaySettings:
    return dataclasses.replace(FAST, **changes)


def memory_relay(publisher: InMemoryPublisher | None = None, **changes: Any) -> Relay:
    return Relay(publisher or InMemoryPublisher(), settings=fast_settings(**changes))


@pytest.fixture
def exchange(rabbit_queue: BoundQueue, settings: Any) -> BoundQueue:
    """The test's private exchange, made the default exchange of ``publish()``."""
    settings.OUTBOX = {**settings.OUTBOX, "EXCHANGE": rabbit_queue.exchange}
    return rabbit_queue


def consume(queue: BoundQueue, count: int, timeout: float = 30.0) -> list[Received]:
    """Read until ``count`` messages in all have arrived (or ``timeout``), with a consumer
    (much faster than basic_get for thousands of messages)."""

    def on_message(channel: Any, method: Any, properties: Any, body: bytes) -> None:
        queue.received.append(Received(bytes(body), properties, method.routing_key))

    tag = queue.channel.basic_consume(queue.name, on_message, auto_ack=True)
    deadline = time.monotonic() + timeout
    try:
        while len(queue.received) < count and time.monotonic() < deadline:
            queue.connection.process_data_events(0.05)  # type: ignore[arg-type]
    finally:
        queue.channel.basic_cancel(tag)
    return list(queue.received)


def payloads(received: list[Received]) -> list[Any]:
    return [json.loads(message.body) for message in received]


def relay_command(*args: str) -> list[str]:
    """``manage.py outbox_relay`` with the test settings plus OUTBOX_TEST_OVERRIDES."""
    return [
        sys.executable,
        str(REPO_ROOT / "manage.py"),
        "outbox_relay",
        *args,
        "--settings=tests.relay.settings",
    ]


def crashing_relay_command(crash_at: str) -> list[str]:
    """A relay that SIGKILLs itself at ``crash_at`` (tests/relay/crashing_relay.py); run it
    with ``cwd=REPO_ROOT``."""
    return [sys.executable, "-m", "tests.relay.crashing_relay", crash_at]


def relay_env(**outbox: Any) -> dict[str, str]:
    """Environment of a relay subprocess: this test's database, and ``outbox`` settings."""
    env = dict(os.environ)
    env["OUTBOX_DB_NAME"] = str(connection.settings_dict["NAME"])
    env["OUTBOX_TEST_OVERRIDES"] = json.dumps(outbox)
    return env


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Subprocesses a test starts; any still running at the end are killed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)  # reaps it and closes its pipes
