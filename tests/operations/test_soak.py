"""bench/soak.py --quick: a minute of steady writes, the real relay and the purge (with its
VACUUM) on a short retention; the outbox table's size must stay bounded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_quick_soak_stays_bounded() -> None:
    env = dict(os.environ)
    # Its own database next to the test database: the soak truncates the outbox table.
    env["OUTBOX_DB_NAME"] = f"{os.environ.get('OUTBOX_DB_NAME', 'outbox_example')}_soak"
    env.pop("DJANGO_SETTINGS_MODULE", None)  # the benchmark's own: example_project.settings
    result = subprocess.run(
        [sys.executable, "bench/soak.py", "--quick"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BOUNDED" in result.stdout
    assert "write errors 0" in result.stdout
