"""At least once through failures, with the WAL relay: SIGKILLed at each step of a batch
(in subprocesses: Java runs once per process), RabbitMQ unreachable mid-stream (a proxy in
front of the shared broker is cut), PostgreSQL restarted mid-stream (a private cluster)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from typing import Any

import psycopg
import pytest
from django.db import connection

from outbox.models import OutboxMessage
from outbox.relay.postgresql import queries
from tests.broker import BROKER_URL, BoundQueue, Received
from tests.relay.conftest import REPO_ROOT, consume, relay_env
from tests.wal.conftest import Slot, requires_wal, running, wait_for, wal_relay
from tests.wal.outages import PG_BIN, PrivateCluster, TcpProxy, private_cluster
from tests.wal.test_wal_relay import all_published, write_transactions

pytestmark = [requires_wal, pytest.mark.django_db(transaction=True), pytest.mark.slow]

CRASHING_RELAY = [sys.executable, "-m", "tests.wal.crashing_wal_relay"]


def create_slot(slot: Slot) -> None:
    """The slot and publication, before any row is written: every row comes through the log."""
    with connection.cursor() as cursor:
        cursor.execute(
            f'CREATE PUBLICATION "{slot.publication}" FOR TABLE outbox_message'
            " WITH (publish = 'insert')"
        )
        cursor.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [slot.slot])


def wal_env(exchange: BoundQueue, slot: Slot, crash_at: str = "", **outbox: Any) -> dict[str, str]:
    env = relay_env(
        EXCHANGE=exchange.exchange,
        WAL_SLOT_NAME=slot.slot,
        WAL_PUBLICATION_NAME=slot.publication,
        RECONNECT_BACKOFF_MAX_SECONDS=0.5,
        **outbox,
    )
    env["OUTBOX_WAL_CRASH_AT"] = crash_at
    return env


def check_delivery(received: list[Received], written: list[str]) -> None:
    """0 lost; copies of one message_id identical; first copies in commit order."""
    bodies: dict[str, set[bytes]] = defaultdict(set)
    first: list[str] = []
    for message in received:
        message_id = str(message.properties.message_id)
        if message_id not in bodies:
            first.append(message_id)
        bodies[message_id].add(message.body)
    assert set(written) - set(bodies) == set(), "lost"
    assert all(len(copies) == 1 for copies in bodies.values()), "a duplicate differs"
    # Global commit order (the transactions ran one after the other), hence per-key order.
    assert first == written
    positions: dict[str, list[int]] = defaultdict(list)
    seen: set[str] = set()
    for message in received:
        headers = message.properties.headers or {}
        if message.properties.message_id in seen or not headers.get("aggregate_type"):
            continue
        seen.add(str(message.properties.message_id))
        key = f"{headers['aggregate_type']}:{headers['aggregate_id']}"
        positions[key].append(int(headers["x-outbox-position"]))
    assert positions, "keyed messages were received"
    assert all(run == sorted(run) for run in positions.values()), "per-key order"


def test_a_wal_relay_killed_at_any_step_loses_nothing_and_keeps_commit_order(
    exchange: BoundQueue, wal_slot: Slot
) -> None:
    create_slot(wal_slot)
    written = write_transactions(10, 4)
    # after_confirm (confirmed, not marked yet) is left out for time: after_mark is later
    # still, and after_publish already leaves rows to send again.
    for crash_at in ("after_read", "after_publish", "after_mark"):
        killed = subprocess.run(
            CRASHING_RELAY,
            env=wal_env(exchange, wal_slot, crash_at),
            cwd=REPO_ROOT,
            capture_output=True,
            timeout=120,
        )
        assert killed.returncode == -9, (crash_at, killed.stderr.decode()[-3000:])
        written += write_transactions(2, 3)
    unpublished = OutboxMessage.objects.exclude(status="published").count()
    assert unpublished > 0, "the crashes left rows to publish"
    relay = subprocess.Popen(
        CRASHING_RELAY,
        env=wal_env(exchange, wal_slot),
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(all_published, 90, "the last relay to publish everything")
        consume(exchange, len(written), timeout=30)
        received = exchange.drain(quiet_seconds=0.5)
    finally:
        relay.terminate()
        _, stderr = relay.communicate(timeout=60)
    assert relay.returncode == 0, stderr.decode()[-3000:]
    check_delivery(received, written)
    assert len(received) > len(written), "the crashes after publishing sent some twice"


def test_the_wal_relay_waits_out_a_rabbitmq_outage_and_resumes_by_itself(
    exchange: BoundQueue, wal_slot: Slot, settings: Any
) -> None:
    proxy = TcpProxy(("127.0.0.1", 5672))
    settings.OUTBOX = {
        **settings.OUTBOX,
        "BROKER_URL": BROKER_URL.replace(":5672/", f":{proxy.port}/"),
        "CONFIRM_TIMEOUT_SECONDS": 2,
    }
    try:
        with running(wal_relay(wal_slot), wal_slot) as relay:
            written = write_transactions(5, 3)
            consume(exchange, len(written))
            # Delivered is not yet confirmed: cut only once the relay has its confirms, so
            # what it holds during the cut is exactly what was written after.
            wait_for(
                lambda: relay.progress.published == len(written),
                30,
                "the confirms of the first rows",
            )
            proxy.cut()
            during = write_transactions(5, 3)
            time.sleep(1.5)  # the relay tries, fails, backs off
            assert relay.progress.published == len(written), "nothing got through the cut"
            proxy.resume()
            written += during + write_transactions(2, 3)
            consume(exchange, len(written), timeout=30)
            wait_for(all_published, 15, "every row to be marked published")
            received = exchange.drain(quiet_seconds=0.3)
    finally:
        proxy.cut()
    check_delivery(received, written)


def private_database(cluster: PrivateCluster) -> str:
    """A database on ``cluster`` with this test database's schema (the outbox tables and
    their triggers), copied with pg_dump rather than migrated (much faster)."""
    name = "outbox_private"
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    schema = subprocess.run(
        [
            "pg_dump",
            "--schema-only",
            "--no-owner",
            "--no-publications",
            "--no-subscriptions",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            str(connection.settings_dict["NAME"]),
        ],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(
        [PG_BIN / "psql", "-q", "-v", "ON_ERROR_STOP=1", cluster.dsn(name)],
        input=schema,
        check=True,
        capture_output=True,
    )
    return name


def write_private(dsn: str, exchange: str, transactions: int, per_transaction: int) -> list[str]:
    """Rows written straight into the private database with the outbox's own INSERT."""
    ids: list[str] = []
    with psycopg.connect(dsn) as database:
        for t in range(transactions):
            with database.transaction():
                for n in range(per_transaction):
                    message_id = str(uuid.uuid4())
                    key = (t + n) % 3
                    database.execute(
                        queries()["insert_message"],
                        {
                            "message_id": message_id,
                            "event_type": "orders.changed",
                            "routing_key": "orders.changed",
                            "exchange": exchange,
                            "aggregate_type": "order",
                            "aggregate_id": str(key),
                            "ordering_key": f"order:{key}",
                            "payload": json.dumps({"t": t}),
                            "headers": "{}",
                            "status": "ready",
                            "attempts": 0,
                            "last_error": "",
                            "published_at": None,
                            "lease_owner": "",
                            "lease_expires_at": None,
                        },
                    )
                    ids.append(message_id)
    return ids


def test_the_wal_relay_resumes_by_itself_after_postgresql_restarts(
    exchange: BoundQueue,
) -> None:
    slot = Slot(slot="outbox_wal_restart", publication="outbox_wal_restart")
    with private_cluster() as cluster:
        name = private_database(cluster)
        dsn = cluster.dsn(name)
        with psycopg.connect(dsn, autocommit=True) as database:
            database.execute(
                "CREATE PUBLICATION outbox_wal_restart FOR TABLE outbox_message"
                " WITH (publish = 'insert')"
            )
            database.execute(
                "SELECT pg_create_logical_replication_slot('outbox_wal_restart', 'pgoutput')"
            )
        written = write_private(dsn, exchange.exchange, 5, 3)
        env = wal_env(exchange, slot)
        env.update(
            OUTBOX_DB_HOST="127.0.0.1", OUTBOX_DB_PORT=str(cluster.port), OUTBOX_DB_NAME=name
        )
        relay = subprocess.Popen(
            CRASHING_RELAY,
            env=env,
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            consume(exchange, len(written), timeout=60)
            cluster.pg_ctl("restart", "-m", "fast")
            cluster.wait_ready()
            written += write_private(dsn, exchange.exchange, 5, 3)
            consume(exchange, len(written), timeout=60)
            received = exchange.drain(quiet_seconds=0.3)

            def published() -> bool:
                with psycopg.connect(dsn) as database:
                    row = database.execute(
                        "SELECT count(*) FROM outbox_message WHERE status <> 'published'"
                    ).fetchone()
                return row is not None and row[0] == 0

            wait_for(published, 30, "every row to be marked published")
        finally:
            relay.terminate()
            _, stderr = relay.communicate(timeout=60)
    assert relay.returncode == 0, stderr.decode()[-3000:]
    check_delivery(received, written)
