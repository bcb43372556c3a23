"""docs/quickstart.md, run as written: the built wheel in a fresh virtual environment, a new
``startproject`` made of the page's own files and commands, against the real PostgreSQL,
RabbitMQ and Redis, up to the shipment the consumer creates. If the page drifts, this fails.

The page runs without the repository's environment (no ``.venv`` on ``PATH``, no
``DJANGO_SETTINGS_MODULE``); pip gets the versions pinned in requirements/example.txt, from
the machine's pip cache when it has them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import psycopg
import pytest

from tests.docs.cleanup import (
    POSTGRES,
    delete_celery_queue,
    delete_consumer_queues,
    drop_database,
)
from tests.docs.markdown import REPO_ROOT, blocks
from tests.docs.quickstart_script import PAGE, Isolation, build_script
from tests.wheel import build_wheel

pytestmark = pytest.mark.slow


def test_the_quickstart_runs_as_written(tmp_path: Path, isolation: Isolation) -> None:
    project = tmp_path / "project"
    logs = tmp_path / "logs"
    project.mkdir()
    logs.mkdir()
    script = tmp_path / "quickstart.sh"
    script.write_text(build_script(blocks(PAGE), isolation, tmp_path / "steps"))
    try:
        run = subprocess.run(
            ["bash", str(script)],
            cwd=project,
            env={**reader_environment(tmp_path), "QUICKSTART_LOGS": str(logs)},
            capture_output=True,
            text=True,
            timeout=400,
        )
    finally:
        stop_leftover_terminals(logs)
    terminal_logs = "".join(
        f"\n--- {log.name}\n{log.read_text()[-3000:]}" for log in sorted(logs.glob("*.log"))
    )
    assert run.returncode == 0, f"{run.stdout[-4000:]}\n{run.stderr[-4000:]}{terminal_logs}"
    assert "== quickstart finished" in run.stdout

    # What the page promises beyond the printed rows: the Celery worker (terminal 2) did the
    # publishing of the first order, and the consumer recorded each message once.
    celery_log = (logs / "terminal-2.log").read_text()
    published_one = r"Task outbox\.tasks\.publish_outbox\[[^\]]+\] succeeded in \S+: 1\b"
    assert re.search(published_one, celery_log), celery_log[-4000:]
    with psycopg.connect(f"{POSTGRES} dbname={isolation.database}") as connection:
        inbox = connection.execute(
            "SELECT consumer, event_type, count(*) FROM outbox_inbox GROUP BY 1, 2"
        ).fetchall()
    assert inbox == [("shipping", "orders.order_placed", 2)]


@pytest.fixture
def isolation(tmp_path: Path) -> Iterator[Isolation]:
    """The wheel, and a database, exchange and Celery queue of this run only; all removed
    afterwards."""
    base = os.environ.get("OUTBOX_DB_NAME", "outbox_example")
    token = uuid.uuid4().hex[:8]
    chosen = Isolation(
        wheel=build_wheel(tmp_path / "wheel"),
        database=f"test_{base}_quickstart",
        exchange=f"quickstart-{token}",
        celery_queue=f"quickstart-{token}",
    )
    drop_database(chosen.database)  # left by a run that was killed
    try:
        yield chosen
    finally:
        drop_database(chosen.database)
        delete_consumer_queues(chosen.exchange, "shipping")
        delete_celery_queue(chosen.celery_queue)


def reader_environment(tmp_path: Path) -> dict[str, str]:
    """This machine's environment as a new user's shell has it: without the repository's
    virtual environment or Django settings, with pip pinned to the tested versions."""
    repository_venv = str(Path(sys.executable).parent)
    path = os.pathsep.join(
        entry for entry in os.environ.get("PATH", "").split(os.pathsep) if entry != repository_venv
    )
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in {"DJANGO_SETTINGS_MODULE", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"}
        and not name.startswith(("OUTBOX_", "CELERY_", "PYTEST_"))
    }
    # pip refuses extras in a constraints file: psycopg[binary]==x becomes psycopg==x.
    constraints = tmp_path / "constraints.txt"
    pins = (REPO_ROOT / "requirements" / "example.txt").read_text()
    constraints.write_text(re.sub(r"\[[^\]]*\]", "", pins))
    return {
        **environment,
        "PATH": path,
        "PIP_CONSTRAINT": str(constraints),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
    }


def stop_leftover_terminals(logs: Path) -> None:
    """The script stops its terminals on exit; a script killed by the timeout cannot."""
    for pid_file in logs.glob("terminal-*.pid"):
        with suppress(ProcessLookupError, ValueError):
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
