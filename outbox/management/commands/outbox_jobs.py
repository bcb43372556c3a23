"""``manage.py outbox_jobs``: the local-job runner (durable after-commit handlers) for projects
without Celery; ``--once`` runs what is due and exits.

Exit status of ``--once``: 4 the database cannot be used, 7 jobs used up their runs and are
failed, 6 jobs failed and wait for a retry, 0 otherwise.
"""

from __future__ import annotations

import logging
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import CommandError
from django.db import DatabaseError, connections

from outbox import conf
from outbox.jobs.runner import run_due_jobs
from outbox.management.base import (
    OutboxCommand,
    database_address,
    stop_on_signals,
    warn_unless_postgresql,
)

logger = logging.getLogger("outbox.jobs")

EXIT_JOBS_RETRIED = 6
EXIT_JOBS_FAILED = 7


class Command(OutboxCommand):
    help = (
        "Run due local jobs (durable after-commit handlers). Runs until SIGTERM/SIGINT,"
        " looking for due jobs every POLL_INTERVAL_SECONDS; --once runs what is due and exits:"
        " 0 all done, 6 jobs failed and will be retried, 7 jobs failed for good, 4 database"
        " unreachable."
    )
    console_logging = True

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--once",
            action="store_true",
            help="run every job due now, print done/skipped/retried/failed counts, and exit",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        warn_unless_postgresql(
            logger,
            "the job table",
            "no SKIP LOCKED, so this must be the only job runner (no run_jobs Celery task either)",
        )
        if options["once"]:
            self._once()
        else:
            self._run()

    def _once(self) -> None:
        result = run_due_jobs()
        if result.failed:
            raise CommandError(
                f"{result}: jobs used up their runs and are failed; see outbox_status",
                returncode=EXIT_JOBS_FAILED,
            )
        if result.retried:
            raise CommandError(
                f"{result}: jobs failed and will be retried; see the log above",
                returncode=EXIT_JOBS_RETRIED,
            )
        self.say(str(result))

    def _run(self) -> None:
        stop = stop_on_signals()  # the job being run is finished and recorded first
        self.say(f"outbox jobs runner on {database_address()}; SIGTERM or Ctrl-C stops it")
        failures = 0
        while not stop.is_set():
            try:
                result = run_due_jobs(should_stop=stop.is_set)
            except DatabaseError as error:
                failures += 1
                for connection in connections.all(initialized_only=True):
                    connection.close()
                pause = min(2.0**failures * 0.1, conf.get_float("RECONNECT_BACKOFF_MAX_SECONDS"))
                logger.warning(
                    "outbox_jobs: database unavailable (%s); trying again in %.1f s", error, pause
                )
                stop.wait(pause)
                continue
            failures = 0
            if result.retried or result.failed:
                self.say(str(result), verbosity=2)
            # A run ends when no job is due: the next look is a poll interval away.
            stop.wait(conf.get_float("POLL_INTERVAL_SECONDS"))
        self.say("outbox jobs runner stopped")
