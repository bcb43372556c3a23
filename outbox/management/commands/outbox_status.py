"""``manage.py outbox_status``: the outbox's health, for people (a table) and machines (JSON).

Exit status, so it can serve as a health check: 0 healthy; otherwise the sum of 1 (the oldest
ready row is older than ``--max-age``), 2 (more failed rows, or failed local jobs, than
``--max-failed``) and 8 (the WAL relay's replication slot: missing while ``RELAY_SOURCE`` is
``"wal"``, retaining more than ``WAL_MAX_LAG_BYTES`` of WAL, behind by more than
``WAL_MAX_LAG_SECONDS``, or lost); 4 when the outbox cannot be read at all (database down).
``--json`` prints one JSON object in every case, the database error included.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.core.management.base import CommandParser
from django.db import DatabaseError

from outbox import conf
from outbox.common.durations import DURATION_SYNTAX, duration_argument, format_duration
from outbox.management.base import (
    EXIT_DATABASE_UNAVAILABLE,
    OutboxCommand,
    count,
    database_address,
    database_error_reason,
)
from outbox.operations import stats, wal_status
from outbox.relay.publishers import UNROUTABLE_ERROR_PREFIX
from outbox.relay.unroutable import declare_hint

EXIT_BACKLOG_TOO_OLD = 1
EXIT_FAILED_ROWS = 2
EXIT_WAL_SLOT = 8

# The table shows this much of the latest error; --json has all of it.
ERROR_PREVIEW_CHARS = 300


class Command(OutboxCommand):
    help = (
        "Show counts per status, unroutable rows, the latest error, the oldest ready row's"
        " age, recent throughput, local jobs (durable after-commit handlers) ready and"
        " failed, and the WAL relay's replication slot. Exits 1 if the backlog is too old, 2"
        " if rows or jobs failed, 8 if the WAL slot is missing or lags (the sum when several"
        " apply), 4 if the database cannot be read."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--json",
            action="store_true",
            help="print one JSON object (also when the database is down)",
        )
        parser.add_argument(
            "--max-age",
            type=duration_argument,
            default=None,
            metavar="DURATION",
            help="unhealthy when the oldest ready row is older: "
            f'{DURATION_SYNTAX} (default OUTBOX["STUCK_AFTER"], 5m)',
        )
        parser.add_argument(
            "--max-failed",
            type=int,
            default=0,
            metavar="N",
            help="unhealthy when more than N rows, or more than N local jobs, are failed"
            " (default 0)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        max_age: timedelta = options["max_age"] or timedelta(seconds=conf.get_int("STUCK_AFTER"))
        try:
            summary = stats.summary()
        except DatabaseError as error:
            # Its own exit status: "cannot tell" must not read as "backlog too old".
            self._unreadable(error, as_json=options["json"])
            raise SystemExit(EXIT_DATABASE_UNAVAILABLE) from error
        problems = []
        exit_code = 0
        slot, slot_problem = _wal_slot(summary)
        if slot_problem:
            exit_code |= EXIT_WAL_SLOT
            problems.append(slot_problem)
        oldest = summary.oldest_ready_age_seconds
        if oldest is not None and oldest > max_age.total_seconds():
            exit_code |= EXIT_BACKLOG_TOO_OLD
            problems.append(
                f"oldest ready row is {format_duration(round(oldest))} old"
                f" (limit {format_duration(max_age)})"
            )
        if summary.failed > options["max_failed"]:
            exit_code |= EXIT_FAILED_ROWS
            problems.append(
                f"{count(summary.failed, 'failed row')} (limit {options['max_failed']})"
            )
        if summary.jobs_failed > options["max_failed"]:
            exit_code |= EXIT_FAILED_ROWS
            problems.append(
                f"{count(summary.jobs_failed, 'failed job')} (limit {options['max_failed']})"
            )
        if slot is not None and slot.problems:
            exit_code |= EXIT_WAL_SLOT
            problems.extend(slot.problems)

        if options["json"]:
            data = {
                **summary.as_json(),
                "wal_slot": None if slot is None else slot.as_json(),
                "healthy": not problems,
                "problems": problems,
            }
            self.stdout.write(json.dumps(data, indent=2, sort_keys=True))
        elif self.verbosity >= 1:
            self.stdout.write(_table(summary, slot, problems))
        elif problems:
            self.stderr.write("unhealthy: " + "; ".join(problems))
        if exit_code:
            raise SystemExit(exit_code)

    def _unreadable(self, error: DatabaseError, *, as_json: bool) -> None:
        message = (
            f"cannot read the outbox from the database at {database_address()}:"
            f" {database_error_reason(error)}"
        )
        if as_json:
            data = {
                "healthy": False,
                "problems": [message],
                "error": message,
                "database": database_address(),
            }
            self.stdout.write(json.dumps(data, indent=2, sort_keys=True))
        else:
            self.stderr.write(message)


def _wal_slot(summary: stats.OutboxSummary) -> tuple[wal_status.WalSlotStatus | None, str]:
    """The WAL slot's status, and why it could not be read when that matters. A slot that
    cannot be read (a server in recovery has no current WAL position, a permission) does
    not make the outbox unreadable: it is a problem only while the source is "wal"."""
    try:
        return wal_status.slot_status(lag_seconds_if_wal=summary.oldest_ready_age_seconds), ""
    except DatabaseError as error:
        if conf.get_str("RELAY_SOURCE") != "wal":
            return None, ""
        return None, f"cannot read the WAL relay's replication slot: {database_error_reason(error)}"


def _table(
    summary: stats.OutboxSummary, slot: wal_status.WalSlotStatus | None, problems: list[str]
) -> str:
    oldest = summary.oldest_ready_age_seconds
    published = f"{'~' if summary.published_is_estimate else ''}{summary.published}"
    last = summary.last_published_at.isoformat() if summary.last_published_at else "never"
    stuck_after = format_duration(summary.stuck_after_seconds)
    rows = [
        ("ready", str(summary.ready)),
        ("failed", str(summary.failed)),
        ("unroutable (no queue bound)", str(summary.unroutable)),
        ("published (kept)", published),
        (f"stuck (ready > {stuck_after}, or failed)", str(summary.stuck)),
        ("oldest ready age", "-" if oldest is None else format_duration(round(oldest, 1))),
        ("published in the last minute", str(summary.published_last_minute)),
        ("throughput (last 5 min)", f"{summary.published_per_second:.2f} msg/s"),
        ("last published at", last),
        ("latest error", _latest_error(summary.latest_error)),
        ("jobs ready (after-commit handlers)", str(summary.jobs_ready)),
        ("jobs failed", str(summary.jobs_failed)),
        *_slot_rows(slot),
        ("health", "OK" if not problems else "UNHEALTHY: " + "; ".join(problems)),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in rows)


def _slot_rows(slot: wal_status.WalSlotStatus | None) -> list[tuple[str, str]]:
    if slot is None:
        return []
    if not slot.exists:
        return [(f"WAL slot {slot.slot_name}", "missing")]
    reader = f"active (pid {slot.active_pid})" if slot.active else "inactive (nothing reads it)"
    lag = "-" if slot.lag_seconds is None else format_duration(round(slot.lag_seconds, 1))
    return [
        (f"WAL slot {slot.slot_name}", reader),
        ("WAL retained for the slot", wal_status.format_bytes(slot.retained_bytes)),
        ("WAL not yet confirmed", wal_status.format_bytes(slot.unconfirmed_bytes)),
        ("WAL relay lag (oldest ready row)", lag),
    ]


def _latest_error(latest: stats.LatestError | None) -> str:
    if latest is None:
        return "-"
    error = latest.error
    if len(error) > ERROR_PREVIEW_CHARS:
        error = error[:ERROR_PREVIEW_CHARS] + "..."
    text = (
        f"{latest.status} {latest.event_type} {latest.message_id}"
        f" (attempt {latest.attempts}): {error}"
    )
    if latest.error.startswith(UNROUTABLE_ERROR_PREFIX):
        text += f"; declare its queue: {declare_hint(latest.exchange, latest.routing_key)}"
    return text
