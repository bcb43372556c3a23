"""``manage.py outbox_purge_inbox``: delete old inbox records in bounded batches."""

from __future__ import annotations

from argparse import ArgumentParser
from datetime import timedelta
from typing import Any

from django.core.management.base import CommandError

from outbox import conf
from outbox.common.durations import DURATION_SYNTAX, duration_argument, format_duration
from outbox.consumer.inbox import purge_inbox
from outbox.management.base import OutboxCommand, count


class Command(OutboxCommand):
    help = (
        "Delete inbox records older than the retention window, oldest first, one short"
        " transaction per batch. A message redelivered after its record is gone is processed"
        " again, so keep the window longer than duplicates can arrive."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--older-than",
            type=duration_argument,
            metavar="DURATION",
            help=f'retention window: {DURATION_SYNTAX} (default OUTBOX["INBOX_RETENTION"], 14d)',
        )
        parser.add_argument(
            "--older-than-days",
            type=float,
            metavar="DAYS",
            help="deprecated spelling of --older-than in days: --older-than-days 30 is"
            " --older-than 30d",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            metavar="N",
            help='records per transaction (default OUTBOX["INBOX_PURGE_BATCH_SIZE"])',
        )

    def handle(self, *args: Any, **options: Any) -> None:
        older_than: timedelta | None = options["older_than"]
        days = options["older_than_days"]
        if days is not None:
            if older_than is not None:
                raise CommandError("give --older-than or --older-than-days, not both")
            if days < 0:
                raise CommandError("--older-than-days must not be negative")
            older_than = timedelta(days=days)
            if self.verbosity >= 1:
                spelled = format_duration(older_than)
                self.stderr.write(f"--older-than-days is deprecated: write --older-than {spelled}")
        if older_than is None:
            older_than = conf.inbox_retention()
        batch_size = options["batch_size"]
        if batch_size is not None and batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        deleted = purge_inbox(older_than=older_than, batch_size=batch_size)
        self.say(
            f"deleted {count(deleted, 'inbox record')} processed more than"
            f" {format_duration(older_than)} ago"
        )
