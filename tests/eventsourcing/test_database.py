"""The event store needs PostgreSQL: on another database it refuses at first use with one
clear error, and ``manage.py check`` says so at start-up (docs/event-sourcing.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

from django.db import connections

from domain_events.checks import check_event_store_database

REPO_ROOT = Path(__file__).resolve().parents[2]

# Every entry point of the store, each expected to raise before any query reaches SQLite.
_USE_THE_STORE = """
from domain_events import EventStore, UnsupportedDatabaseError, read_events, run_projection
from domain_events.eventsourcing.projections import Projection
from example_project.bank.accounts import Account

class Nothing(Projection):
    name = "nothing"

account = Account.open("ann")
calls = {
    "get": lambda: EventStore().get(Account, account.id),
    "save": lambda: EventStore().save(account),
    "history": lambda: EventStore().history(Account, account.id),
    "read_events": lambda: read_events(),
    "run_projection": lambda: run_projection(Nothing()),
}
for name, call in calls.items():
    try:
        call()
    except UnsupportedDatabaseError as error:
        print(name, "refused:", error)
    else:
        print(name, "ran")
"""


def sqlite_manage(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OUTBOX_SQLITE_PATH": str(tmp_path / "db.sqlite3")}
    return subprocess.run(
        [sys.executable, "manage.py", *args, "--settings=tests.sqlite_settings"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_on_sqlite_every_store_call_raises_a_clear_error_and_check_warns(
    tmp_path: Path,
) -> None:
    used = sqlite_manage(tmp_path, "shell", "--no-imports", "-c", _USE_THE_STORE)
    assert used.returncode == 0, used.stderr
    lines = used.stdout.strip().splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == [
        "get",
        "save",
        "history",
        "read_events",
        "run_projection",
    ]
    for line in lines:
        assert "refused: the event store needs PostgreSQL, but database 'default' is sqlite" in line
    assert "syntax error" not in used.stdout + used.stderr
    # Nothing was written either: the file has no tables, since nothing was migrated.
    assert not (tmp_path / "db.sqlite3").exists() or (tmp_path / "db.sqlite3").stat().st_size == 0

    checked = sqlite_manage(tmp_path, "check")
    assert checked.returncode == 0, checked.stderr  # a warning: SQLite stays usable for the rest
    assert "domain_events.W001" in checked.stderr
    assert "the event store needs PostgreSQL, but database 'default' is sqlite" in checked.stderr


def test_the_check_passes_on_postgresql_and_names_another_database() -> None:
    assert check_event_store_database() == []
    with mock.patch.object(connections["default"], "vendor", "mysql"):
        [problem] = check_event_store_database()
    assert problem.id == "domain_events.W001"
    assert "database 'default' is mysql" in problem.msg
    assert "SILENCED_SYSTEM_CHECKS" in (problem.hint or "")
