"""outbox.E011 against real servers: a private cluster left at wal_level = replica fails the
check; the shared server (logical) passes; an unreachable one says nothing of wal_level."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.wal_support import (
    private_cluster,
    requires_java_and_debezium,
    requires_logical_wal,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def check_database(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--database", "default"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.relay.settings",
            "OUTBOX_TEST_OVERRIDES": json.dumps({"RELAY_SOURCE": "wal"}),
            **env,
        },
    )


def test_a_server_at_replica_fails_the_check_and_an_unreachable_one_does_not() -> None:
    with private_cluster(wal_level="replica") as port:
        at_replica = check_database(OUTBOX_DB_PORT=str(port), OUTBOX_DB_NAME="postgres")
    unreachable = check_database(OUTBOX_DB_PORT="1")

    assert at_replica.returncode == 1, at_replica.stderr
    assert "outbox.E011" in at_replica.stderr
    assert "wal_level is 'replica'" in at_replica.stderr
    assert "ALTER SYSTEM SET wal_level = logical" in at_replica.stderr
    assert "outbox.E011" not in unreachable.stderr, unreachable.stderr


@requires_logical_wal
@requires_java_and_debezium
def test_the_shared_server_at_logical_passes() -> None:
    result = check_database()

    assert result.returncode == 0, result.stderr
    assert "outbox.E01" not in result.stderr
