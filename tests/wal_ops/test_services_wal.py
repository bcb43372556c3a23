"""scripts/services.sh prepares the WAL relay's tests: wal_level = logical (with a restart,
only when needed) and a Java runtime, and says clearly when it cannot."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest

from tests.wal_support import POSTGRESQL_BIN, private_cluster

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def bash(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/bash", "-c", f"source {SCRIPTS}/services.sh; {script}"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def wal_level(port: int) -> str:
    with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres") as c:
        row = c.execute("SHOW wal_level").fetchone()
    assert row is not None
    return str(row[0])


def test_a_server_at_replica_is_set_to_logical_and_restarted_once() -> None:
    with private_cluster(wal_level="replica") as port:
        data = _data_directory(port)
        # The restart a Debian cluster gets from pg_ctlcluster, for the private cluster.
        as_postgres = "runuser -u postgres -- " if os.geteuid() == 0 else ""
        restart = (
            f"restart_private() {{ {as_postgres}{POSTGRESQL_BIN}/pg_ctl -D {data}"
            f" -w -m fast restart -l {data.parent}/log >/dev/null; }};"
        )
        first = bash(f"{restart} ensure_logical_wal restart_private", OUTBOX_DB_PORT=str(port))
        level = wal_level(port)
        second = bash(f"{restart} ensure_logical_wal restart_private", OUTBOX_DB_PORT=str(port))

    assert first.returncode == 0, first.stderr
    assert "runs at wal_level = replica" in first.stderr
    assert "ALTER SYSTEM SET wal_level = logical" in first.stderr
    assert "PostgreSQL is at wal_level = logical" in first.stderr
    assert level == "logical"
    assert second.returncode == 0
    assert second.stderr == ""  # already logical: no restart, nothing said


def test_missing_java_that_cannot_be_installed_is_said_and_not_fatal() -> None:
    result = subprocess.run(
        ["/bin/bash", "-c", f"source {SCRIPTS}/services.sh; ensure_java; echo after"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/nonexistent"},
    )

    assert result.returncode == 0
    assert "java is missing" in result.stderr
    assert "could not install openjdk-17-jre-headless with apt-get" in result.stderr
    assert "WAL relay tests will be skipped" in result.stderr
    assert result.stdout.strip() == "after"


def test_java_present_is_left_alone() -> None:
    if shutil.which("java") is None:
        pytest.skip("no java on this machine")
    result = bash("ensure_java")

    assert result.returncode == 0
    assert result.stderr == ""


def _data_directory(port: int) -> Path:
    with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres") as c:
        row = c.execute("SHOW data_directory").fetchone()
    assert row is not None
    return Path(str(row[0]))
