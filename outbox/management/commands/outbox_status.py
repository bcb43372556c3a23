"""``manage.py outbox_status``: the outbox's health, for people (a table) and machines (JSON).

Exit status, so it can serve as a health check: 0 healthy; otherwise the sum of 1 (the oldest
ready row is older than ``--max-age``) and 2 (more failed rows than ``--max-failed``); 4 when
the outbox cannot be read at all (database down).
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import DatabaseError

from outbox import conf
from outbox.operations import stats

EXIT_BACKLOG_TOO_OLD = 1
EXIT_FAILED_ROWS = 2
EXIT_DATABASE_UNAVAILABLE = 4


class Command(BaseCommand):
    help = (
        "Show counts per status, the oldest ready row's age, failed rows and recent throughput."
        " Exits 1 if the backlog is too old, 2 if rows failed, 3 if both, 4 if the database"
        " cannot be read."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        parser.add_argument(
            "--max-age",
            type=float,
            default=None,
            metavar="SECONDS",
            help='unhealthy when the oldest ready row is older (default OUTBOX["STUCK_AFTER"])',
        )
        parser.add_argument(
            "--max-failed",
            type=int,
            default=0,
            metavar="N",
            help="unhealthy when more than N rows are failed (default 0)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        max_age: float = (
            options["max_age"] if options["max_age"] is not None else conf.get_int("STUCK_AFTER")
        )
        try:
            summary = stats.summary()
        except DatabaseError as error:
            # Its own exit status: "cannot tell" must not read as "backlog too old".
            self.stderr.write(f"outbox_status: cannot read the outbox: {error}")
            raise SystemExit(EXIT_DATABASE_UNAVAILABLE) from error
        problems = []
        exit_code = 0
        oldest = summary.oldest_ready_age_seconds
        if oldest is not None and oldest > max_age:
            exit_code |= EXIT_BACKLOG_TOO_OLD
            problems.append(f"oldest ready row is {oldest:.0f} s old (limit {max_age:g} s)")
        if summary.failed > options["max_failed"]:
            exit_code |= EXIT_FAILED_ROWS
            problems.append(f"{summary.failed} failed row(s) (limit {options['max_failed']})")

        if options["json"]:
            data = {**summary.as_json(), "healthy": not problems, "problems": problems}
            self.stdout.write(json.dumps(data, indent=2, sort_keys=True))
        else:
            self.stdout.write(_table(summary, problems))
        if exit_code:
            raise SystemExit(exit_code)


def _table(summary: stats.OutboxSummary, problems: list[str]) -> str:
    oldest = summary.oldest_ready_age_seconds
    published = f"{'~' if summary.published_is_estimate else ''}{summary.published}"
    last = summary.last_published_at.isoformat() if summary.last_published_at else "never"
    rows = [
        ("ready", str(summary.ready)),
        ("failed", str(summary.failed)),
        ("published (kept)", published),
        (f"stuck (ready > {summary.stuck_after_seconds} s, or failed)", str(summary.stuck)),
        ("oldest ready age", "-" if oldest is None else f"{oldest:.1f} s"),
        ("published in the last minute", str(summary.published_last_minute)),
        ("throughput (last 5 min)", f"{summary.published_per_second:.2f} msg/s"),
        ("last published at", last),
        ("health", "OK" if not problems else "UNHEALTHY: " + "; ".join(problems)),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in rows)
