"""outbox_status, outbox_replay and outbox_purge, run as management commands."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from outbox.models import OutboxMessage
from outbox.operations import actions
from tests.operations.conftest import MakeMessage, refreshed

READY = OutboxMessage.Status.READY
FAILED = OutboxMessage.Status.FAILED
PUBLISHED = OutboxMessage.Status.PUBLISHED
REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.django_db


def run(*args: str, **options: Any) -> tuple[str, int]:
    """Run a command; return its output and exit status."""
    out = io.StringIO()
    try:
        call_command(*args, stdout=out, stderr=io.StringIO(), **options)
    except SystemExit as exit:
        return out.getvalue(), int(exit.code or 0)
    return out.getvalue(), 0


# --- outbox_status ---


def test_status_is_healthy_with_a_fresh_backlog(make_message: MakeMessage) -> None:
    make_message(READY, age=timedelta(seconds=5))
    make_message(PUBLISHED)

    output, code = run("outbox_status")

    assert code == 0
    assert "ready" in output
    assert "health" in output
    assert output.rstrip().endswith("OK")


def test_status_json_and_exit_codes_name_each_problem(make_message: MakeMessage) -> None:
    make_message(READY, age=timedelta(minutes=20))
    make_message(FAILED)

    output, code = run("outbox_status", "--json")

    assert code == 3
    data = json.loads(output)
    assert (data["ready"], data["failed"], data["healthy"]) == (1, 1, False)
    assert len(data["problems"]) == 2
    assert data["oldest_ready_age_seconds"] > 1100

    assert run("outbox_status", "--json", "--max-age", "1h")[1] == 2
    assert run("outbox_status", "--max-failed", "1")[1] == 1
    assert run("outbox_status", "--max-age", "3600", "--max-failed", "1")[1] == 0  # bare: s


# --- outbox_replay ---


def test_replay_needs_a_selection() -> None:
    with pytest.raises(CommandError, match="--all"):
        call_command("outbox_replay", "--yes")


def test_replay_dry_run_lists_and_changes_nothing(make_message: MakeMessage) -> None:
    chosen = make_message(PUBLISHED, event_type="orders.order_paid")
    make_message(PUBLISHED)

    output, _ = run("outbox_replay", "--event-type", "orders.order_paid", "--dry-run")

    assert str(chosen.message_id) in output
    assert "1 message would be replayed keeping their message ids" in output
    assert OutboxMessage.objects.filter(status=READY).count() == 0


def test_replay_refuses_to_ask_a_non_interactive_input(
    make_message: MakeMessage, monkeypatch: pytest.MonkeyPatch
) -> None:
    row = make_message(PUBLISHED)
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    with pytest.raises(CommandError, match="--noinput"):
        call_command("outbox_replay", "--all")
    assert refreshed(row).status == PUBLISHED


def test_replay_by_aggregate_and_time_range_keeps_ids(make_message: MakeMessage) -> None:
    old = make_message(PUBLISHED, age=timedelta(days=2), aggregate_id="7")
    recent = make_message(PUBLISHED, age=timedelta(hours=1), aggregate_id="7")
    other = make_message(PUBLISHED, age=timedelta(hours=1), aggregate_id="8")
    since = (timezone.now() - timedelta(days=1)).isoformat()

    output, _ = run(
        "outbox_replay",
        "--aggregate-type=order",
        "--aggregate-id=7",
        f"--since={since}",
        "--yes",
    )

    assert "replayed 1 message keeping their message ids" in output
    assert refreshed(recent).status == READY
    assert refreshed(recent).message_id == recent.message_id
    assert refreshed(old).status == PUBLISHED
    assert refreshed(other).status == PUBLISHED


def test_replay_by_message_id_with_new_ids_and_a_progress_bar(
    make_message: MakeMessage,
) -> None:
    rows = [make_message(PUBLISHED) for _ in range(5)]
    failed = make_message(FAILED)
    err = _Terminal()
    ids = [str(row.message_id) for row in [*rows, failed]]

    call_command(
        "outbox_replay",
        "--message-id",
        *ids,
        "--status",
        "published",
        "failed",
        "--new-ids",
        "--batch-size=2",
        "--yes",
        stdout=io.StringIO(),
        stderr=err,
    )

    copies = OutboxMessage.objects.filter(headers__has_key=actions.REPLAY_OF_HEADER)
    assert copies.count() == 6
    assert "6/6" in err.getvalue()
    assert all(refreshed(row).status == PUBLISHED for row in rows)


def test_replay_rejects_a_bad_date() -> None:
    with pytest.raises(CommandError, match="--since: not an ISO 8601 date"):
        call_command("outbox_replay", "--since", "yesterday", "--yes")


# --- outbox_purge ---


def test_purge_deletes_only_old_published_rows(make_message: MakeMessage) -> None:
    old_published = [make_message(PUBLISHED, published_ago=timedelta(days=10)) for _ in range(5)]
    recent = make_message(PUBLISHED, published_ago=timedelta(days=1))
    old_ready = make_message(READY, age=timedelta(days=30))
    old_failed = make_message(FAILED, age=timedelta(days=30))

    output, _ = run("outbox_purge", "--older-than", "7d", "--batch-size", "2")

    assert output.strip() == "deleted 5 published messages published more than 7d ago"
    remaining = set(OutboxMessage.objects.values_list("pk", flat=True))
    assert remaining == {recent.pk, old_ready.pk, old_failed.pk}
    assert not remaining & {row.pk for row in old_published}


def test_purge_stops_after_max_batches(make_message: MakeMessage) -> None:
    for _ in range(5):
        make_message(PUBLISHED, published_ago=timedelta(days=10))

    output, _ = run("outbox_purge", "--batch-size=2", "--max-batches=2")

    assert "deleted 4 " in output
    assert OutboxMessage.objects.count() == 1


def test_purge_rejects_a_bad_batch_size() -> None:
    with pytest.raises(CommandError, match="batch_size"):
        call_command("outbox_purge", "--batch-size=0")


def test_replay_accepts_a_plain_date(make_message: MakeMessage) -> None:
    old = make_message(PUBLISHED, age=timedelta(days=3))
    recent = make_message(PUBLISHED)
    today = timezone.localdate().isoformat()

    run("outbox_replay", "--since", today, "--yes")

    assert refreshed(recent).status == READY
    assert refreshed(old).status == PUBLISHED


# --- as a health check, in its own process ---


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args, "--settings=tests.settings"],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.django_db(transaction=True)
def test_status_exit_code_as_a_process(make_message: MakeMessage) -> None:
    database = connection.settings_dict["NAME"]
    assert manage("outbox_status", OUTBOX_DB_NAME=database).returncode == 0

    make_message(READY, age=timedelta(minutes=10))
    stale = manage("outbox_status", "--json", OUTBOX_DB_NAME=database)

    assert stale.returncode == 1
    assert json.loads(stale.stdout)["backlog_stale"] is True


def test_status_exit_code_when_the_database_is_unreachable() -> None:
    result = manage("outbox_status", OUTBOX_DB_PORT="1")

    assert result.returncode == 4
    assert "cannot read the outbox" in result.stderr


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_replay_asks_and_stops_on_no(
    make_message: MakeMessage, monkeypatch: pytest.MonkeyPatch
) -> None:
    row = make_message(PUBLISHED)
    monkeypatch.setattr("sys.stdin", _Terminal("n\n"))
    monkeypatch.setattr("sys.stdout", io.StringIO())  # input() writes its prompt there

    with pytest.raises(CommandError, match="cancelled"):
        call_command("outbox_replay", "--all", stdout=io.StringIO())

    assert refreshed(row).status == PUBLISHED


def test_replay_asks_and_goes_on_yes(
    make_message: MakeMessage, monkeypatch: pytest.MonkeyPatch
) -> None:
    row = make_message(PUBLISHED)
    monkeypatch.setattr("sys.stdin", _Terminal("y\n"))
    prompt = io.StringIO()
    monkeypatch.setattr("sys.stdout", prompt)

    call_command("outbox_replay", "--all", stdout=io.StringIO())

    assert "Replay 1 message keeping their message ids? [y/N]" in prompt.getvalue()
    assert refreshed(row).status == READY
