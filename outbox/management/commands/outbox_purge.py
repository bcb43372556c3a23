"""``manage.py outbox_purge``: delete published rows older than the retention period.

Deletes in bounded batches (one short transaction each); never touches ready or failed rows.
The Celery task ``outbox.tasks.purge_outbox`` does the same on a schedule.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import CommandError, CommandParser

from outbox import conf
from outbox.common.durations import DURATION_SYNTAX, duration_argument, format_duration
from outbox.management.base import OutboxCommand, count
from outbox.operations import actions


class Command(OutboxCommand):
    help = "Delete published outbox rows older than the retention period, in batches."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            type=duration_argument,
            default=None,
            metavar="DURATION",
            help=f'retention: {DURATION_SYNTAX} (default OUTBOX["RETENTION"], 7d)',
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=None,
            metavar="N",
            help='rows per DELETE (default OUTBOX["PURGE_BATCH_SIZE"])',
        )
        parser.add_argument(
            "--max-batches",
            type=int,
            default=None,
            metavar="N",
            help="stop after this many batches (default: until done)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        older_than: timedelta = options["older_than"] or timedelta(
            seconds=conf.get_float("RETENTION")
        )
        batches = 0

        def batch_done(deleted: int) -> None:
            nonlocal batches
            batches += 1
            self.say(f"batch {batches}: deleted {count(deleted, 'row')}", verbosity=2)

        try:
            deleted = actions.purge_published(
                older_than=older_than,
                batch_size=options["batch_size"],
                max_batches=options["max_batches"],
                on_batch=batch_done,
            )
        except ValueError as error:
            raise CommandError(str(error)) from error
        self.say(
            f"deleted {count(deleted, 'published message')} published more than"
            f" {format_duration(older_than)} ago"
        )
