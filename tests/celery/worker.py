"""Start a real Celery worker with beat on the example project, and always stop it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from django.db import connection

REPO_ROOT = Path(__file__).resolve().parents[2]
CELERY = Path(sys.executable).with_name("celery")


@dataclass(frozen=True)
class Worker:
    pid: int
    log: Path


@contextmanager
def celery_worker(
    directory: Path, *, exchange: str, publish_every: float = 0.2, purge_every: float = 1.0
) -> Iterator[Worker]:
    """``celery -A example_project worker --beat`` on the test database and ``exchange``, with
    a private Redis queue (parallel runs on one Redis would otherwise take each other's
    tasks). The whole process group is stopped when the block ends, however it ends."""
    log = directory / "celery-worker.log"
    environment = {
        **os.environ,
        "OUTBOX_DB_NAME": str(connection.settings_dict["NAME"]),
        "OUTBOX_EXCHANGE": exchange,
        "CELERY_TASK_DEFAULT_QUEUE": f"test-{uuid.uuid4().hex[:12]}",
        "OUTBOX_PUBLISH_EVERY": str(publish_every),
        "OUTBOX_PURGE_EVERY": str(purge_every),
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
        "PYTHONPATH": str(REPO_ROOT),
    }
    command = [
        str(CELERY),
        "-A",
        "example_project",
        "worker",
        "--beat",
        "--loglevel=info",
        "--concurrency=1",
        # beat's state file goes to the test's directory, not the repository
        f"--schedule={directory / 'celerybeat-schedule'}",
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            cwd=directory,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield Worker(process.pid, log)
    finally:
        stop_process_group(process)


def stop_process_group(process: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM the group that ``process`` leads (a warm shutdown for Celery), SIGKILL it after
    ``grace`` seconds, and reap the leader."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)
    # Also the children that outlived their parent (a pool process, embedded beat).
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
