"""The relay on a database other than PostgreSQL (docs/concepts.md).

End to end on SQLite, in subprocesses with ``tests.sqlite_settings`` and the real RabbitMQ:
``migrate``, ``outbox.publish`` in ``transaction.atomic``, ``manage.py outbox_relay``. The store's
own rules are the shared contract of tests/relay/test_store_contract.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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
    "id", "message_id", "event_type", "status", "attempts", "last_error"
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

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args),
            env=self.env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
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

    relay = project.run("outbox_relay", "--once", check=False)

    # The "unrouted" row used up its two attempts: --once says so in its exit status.
    assert relay.returncode == 7, relay.stderr
    assert "published 4, retried 1, failed 1, released 0: rows used up" in relay.stderr
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
    # No trigger assigns positions on SQLite: the row's id (commit order there) is its position.
    assert placed.properties.headers == {
        "aggregate_type": "order",
        "aggregate_id": "A",
        "x-outbox-position": rows["order.placed"]["id"],
    }
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
