"""``manage.py outbox_purge``: delete published rows older than the retention period.

Deletes in bounded batches (one short transaction each); never touches ready or failed rows.
The Celery task ``outbox.tasks.purge_outbox`` does the same on a schedule.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from outbox import conf
from outbox.operations import actions


class Command(BaseCommand):
    help = "Delete published outbox rows older than the retention period, in batches."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            type=float,
            default=None,
            metavar="SECONDS",
            help='retention in seconds (default OUTBOX["RETENTION"])',
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=None,
            help='rows per DELETE (default OUTBOX["PURGE_BATCH_SIZE"])',
        )
        parser.add_argument(
            "--max-batches", type=int, default=None, help="stop after this many batches"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        seconds = options["older_than"]
        if seconds is None:
            seconds = conf.get_int("RETENTION")
        try:
            deleted = actions.purge_published(
                older_than=timedelta(seconds=seconds),
                batch_size=options["batch_size"],
                max_batches=options["max_batches"],
            )
        except ValueError as error:
            raise CommandError(str(error)) from error
        self.stdout.write(
            f"Deleted {deleted} published message(s) published more than {seconds:g} s ago."
        )
