"""The relay on a database other than PostgreSQL (docs/concepts.md).

End to end on SQLite, in subprocesses with ``tests.sqlite_settings`` and the real RabbitMQ:
``migrate``, ``outbox.publish`` in ``transaction.atomic``, ``manage.py outbox_relay``. Then
the claim, lease and retry rules of the ORM backend, checked against the SQL one on the test
PostgreSQL database: both must give the same answers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from outbox.models import OutboxMessage
from outbox.relay import store
from tests.broker import BoundQueue, bound_queue
from tests.relay.conftest import REPO_ROOT, payloads

# ---------------------------------------------------------------------------------------------
# End to end on SQLite
# ---------------------------------------------------------------------------------------------

# Rows written by the first transaction of the scenario; the queue is bound to "*.*", so the
# single-word routing key "unrouted" reaches no queue.
_WRITE = """
from django.db import transaction
import outbox
with transaction.atomic():
    outbox.publish("order.placed", {"n": 1}, aggregate_type="order", aggregate_id="A")
    outbox.publish("order.paid", {"n": 2}, aggregate_type="order", aggregate_id="A")
    outbox.publish("stock.changed", {"n": 3})
    outbox.publish("order.lost", {"n": 4}, aggregate_type="order", aggregate_id="B",
                   routing_key="unrouted")
with transaction.atomic():
    outbox.publish("order.shipped", {"n": 5}, aggregate_type="order", aggregate_id="A")
"""

_READ_ROWS = """
import json
from outbox.models import OutboxMessage
rows = OutboxMessage.objects.order_by("id").values(
    "message_id", "event_type", "status", "attempts", "last_error"
)
print(json.dumps([{**row, "message_id": str(row["message_id"])} for row in rows]))
"""


class SQLiteProject:
    """``manage.py`` commands run on one SQLite file, with the given OUTBOX overrides."""

    def __init__(self, path: Path, exchange: str, **outbox: Any) -> None:
        self.env = dict(os.environ)
        self.env["OUTBOX_SQLITE_PATH"] = str(path)
        self.env["OUTBOX_TEST_OVERRIDES"] = json.dumps({"EXCHANGE": exchange, **outbox})

    def command(self, *args: str) -> list[str]:
        return [
            sys.executable,
            str(REPO_ROOT / "manage.py"),
            *args,
            "--settings=tests.sqlite_settings",
        ]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args),
            env=self.env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )

    def shell(self, code: str) -> str:
        return self.run("shell", "--no-imports", "-c", code).stdout

    def rows(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(self.shell(_READ_ROWS).strip().splitlines()[-1])
        return rows


@pytest.fixture
def sqlite_queue() -> Iterator[BoundQueue]:
    with bound_queue(binding_key="*.*") as queue:
        yield queue


@pytest.fixture
def project(tmp_path: Path, sqlite_queue: BoundQueue) -> SQLiteProject:
    # Retries come due at once, so "--once" sees a refused row through to failed.
    sqlite = SQLiteProject(
        tmp_path / "outbox.sqlite3",
        sqlite_queue.exchange,
        MAX_ATTEMPTS=2,
        RETRY_BACKOFF_SECONDS=0,
        RETRY_BACKOFF_MAX_SECONDS=0,
        POLL_INTERVAL_SECONDS=0.2,
    )
    sqlite.run("migrate", "--verbosity=0")
    return sqlite


def test_relay_once_on_sqlite_publishes_in_key_order(
    project: SQLiteProject, sqlite_queue: BoundQueue
) -> None:
    project.shell(_WRITE)

    relay = project.run("outbox_relay", "--once")

    assert relay.stdout.strip() == "published 4"
    assert "not on PostgreSQL" in relay.stderr  # the single-relay warning
    received = sqlite_queue.drain()
    by_type = {str(message.properties.type): message for message in received}
    assert sorted(by_type) == ["order.paid", "order.placed", "order.shipped", "stock.changed"]
    aggregate_a = [m.properties.type for m in received if m.properties.type != "stock.changed"]
    assert aggregate_a == ["order.placed", "order.paid", "order.shipped"]
    rows = {row["event_type"]: row for row in project.rows()}
    placed = by_type["order.placed"]
    # The wire format of docs/concepts.md, as on PostgreSQL.
    assert placed.properties.message_id == rows["order.placed"]["message_id"]
    assert placed.properties.content_type == "application/json"
    assert placed.properties.delivery_mode == 2
    assert placed.routing_key == "order.placed"
    assert placed.properties.headers == {"aggregate_type": "order", "aggregate_id": "A"}
    assert json.loads(placed.body) == {"n": 1}
    assert payloads([by_type["stock.changed"]]) == [{"n": 3}]
    assert {name: row["status"] for name, row in rows.items()} == {
        "order.placed": "published",
        "order.paid": "published",
        "stock.changed": "published",
        "order.shipped": "published",
        "order.lost": "failed",
    }
    # Unroutable twice (ON_UNROUTABLE "retry"): one retry, then failed at MAX_ATTEMPTS.
    assert rows["order.lost"]["attempts"] == 2
    assert "NO_ROUTE" in rows["order.lost"]["last_error"]


def test_relay_worker_on_sqlite_polls_for_new_rows(
    project: SQLiteProject, sqlite_queue: BoundQueue
) -> None:
    worker = subprocess.Popen(
        project.command("outbox_relay"),
        env=project.env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None
        assert "running" in worker.stdout.readline()
        # Written while the worker sleeps: no notification exists, the next poll finds it.
        project.shell(_WRITE)
        received = sqlite_queue.get(4, timeout=15)
        worker.send_signal(signal.SIGTERM)
        stdout, stderr = worker.communicate(timeout=15)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 0, stderr
    assert "outbox relay stopped" in stdout
    assert [m.properties.type for m in received if m.properties.type != "stock.changed"] == [
        "order.placed",
        "order.paid",
        "order.shipped",
    ]


# ---------------------------------------------------------------------------------------------
# The ORM backend's rules, side by side with the SQL backend's (on PostgreSQL)
# ---------------------------------------------------------------------------------------------

db_committed = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["sql", "orm"])
def backend(request: pytest.FixtureRequest) -> store._Backend:
    # The private backends themselves: the ORM one is the code SQLite runs, and it must
    # agree with the named queries PostgreSQL runs.
    backends: dict[str, store._Backend] = {"sql": store._SQL, "orm": store._ORM}
    return backends[request.param]


def _row(name: str, key: str = "", **fields: Any) -> OutboxMessage:
    aggregate_type, _, aggregate_id = key.partition(":")
    return OutboxMessage.objects.create(
        event_type=name,
        routing_key=name,
        exchange="x",
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        ordering_key=key,
        payload={"name": name},
        headers={"h": 1},
        **fields,
    )


def _claim(backend: store._Backend, owner: str = "relay-1", limit: int = 10) -> list[str]:
    alias = connection.alias
    claimed = backend.claim(alias, owner=owner, limit=limit, lease_seconds=30)
    return [message.event_type for message in claimed]


@db_committed
def test_claim_takes_only_the_head_of_each_key(backend: store._Backend) -> None:
    a1 = _row("a1", "order:A")
    _row("a2", "order:A")
    _row("b1", "order:B")
    _row("free")
    _row("later", next_attempt_at=timezone.now() + timedelta(hours=1))
    _row("done", "order:C", status=OutboxMessage.Status.PUBLISHED)
    _row("c2", "order:C")

    assert _claim(backend) == ["a1", "b1", "free", "c2"]
    claimed = backend.claim(connection.alias, owner="relay-2", limit=10, lease_seconds=30)
    assert claimed == []  # all leased, a2 still behind a1

    assert backend.mark_published(connection.alias, [a1.id]) == 1
    assert _claim(backend, "relay-2") == ["a2"]


@db_committed
def test_claim_returns_the_row_and_sets_the_lease(backend: store._Backend) -> None:
    row = _row("a1", "order:A")
    before = timezone.now()

    [message] = backend.claim(connection.alias, owner="relay-1", limit=10, lease_seconds=30)

    assert (message.id, message.message_id, message.exchange) == (row.id, row.message_id, "x")
    assert (message.aggregate_type, message.aggregate_id) == ("order", "A")
    assert json.loads(message.payload_json) == {"name": "a1"}
    assert message.headers == {"h": 1}
    assert message.attempts == 0
    row.refresh_from_db()
    assert row.lease_owner == "relay-1"
    assert row.lease_expires_at is not None
    assert before + timedelta(seconds=25) < row.lease_expires_at < before + timedelta(seconds=35)


@db_committed
def test_lease_is_respected_until_it_expires_or_is_released(backend: store._Backend) -> None:
    alias = connection.alias
    first = _row("a1", "order:A")
    second = _row("b1", "order:B")
    assert _claim(backend, "relay-1") == ["a1", "b1"]

    assert _claim(backend, "relay-2") == []
    assert backend.release(alias, [first.id, second.id], owner="relay-2") == 0
    OutboxMessage.objects.filter(id=first.id).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert _claim(backend, "relay-2") == ["a1"]  # expired: free for anyone
    assert backend.release(alias, [second.id], owner="relay-1") == 1
    assert _claim(backend, "relay-3") == ["b1"]
    assert OutboxMessage.objects.get(id=second.id).attempts == 0


def _retry(
    backend: store._Backend, errors: dict[int, str], owner: str = "relay-1"
) -> store.RetryResult:
    return backend.schedule_retry(
        connection.alias, errors, owner=owner, max_attempts=2, backoff=10.0, backoff_max=60.0
    )


@db_committed
def test_retry_backs_off_then_fails_at_max_attempts(backend: store._Backend) -> None:
    row = _row("a1", "order:A")
    _row("a2", "order:A")
    assert _claim(backend) == ["a1"]

    # Only the lease holder counts an attempt.
    assert _retry(backend, {row.id: "nack"}, owner="other") == store.RetryResult([], [])
    before = timezone.now()
    assert _retry(backend, {row.id: "nack"}) == store.RetryResult([row.id], [])
    row.refresh_from_db()
    assert (row.status, row.attempts, row.last_error, row.lease_owner) == ("ready", 1, "nack", "")
    # 10 s * 2**0 with equal jitter: between 5 and 10 s from now.
    assert (
        before + timedelta(seconds=4.9)
        < row.next_attempt_at
        < timezone.now() + timedelta(seconds=10.1)
    )
    assert _claim(backend) == []  # not due yet, and a2 waits behind it

    OutboxMessage.objects.filter(id=row.id).update(next_attempt_at=timezone.now())
    assert _claim(backend) == ["a1"]
    assert _retry(backend, {row.id: "nack again"}) == store.RetryResult([], [row.id])
    row.refresh_from_db()
    assert (row.status, row.attempts, row.last_error) == ("failed", 2, "nack again")
    assert _claim(backend) == []  # a failed row still holds back its key


@db_committed
def test_unroutable_is_recorded_as_published(backend: store._Backend) -> None:
    alias = connection.alias
    first = _row("a1", "order:A")
    second = _row("b1", "order:B")
    _claim(backend)

    recorded = backend.mark_published_unroutable(
        alias, {first.id: "NO_ROUTE a", second.id: "NO_ROUTE b"}
    )

    assert recorded == 2
    assert sorted(
        OutboxMessage.objects.values_list("event_type", "status", "last_error", "lease_owner")
    ) == [("a1", "published", "NO_ROUTE a", ""), ("b1", "published", "NO_ROUTE b", "")]
    assert backend.mark_published(alias, [first.id]) == 0  # recorded once
