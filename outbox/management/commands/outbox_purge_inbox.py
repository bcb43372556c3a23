"""``manage.py outbox_purge_inbox``: delete old inbox records in bounded batches."""

from __future__ import annotations

from argparse import ArgumentParser
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from outbox.consumer.inbox import purge_inbox


class Command(BaseCommand):
    help = (
        "Delete inbox records older than the retention window, oldest first, one short"
        " transaction per batch. A message redelivered after its record is gone is processed"
        " again, so keep the window longer than duplicates can arrive."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--older-than-days",
            type=float,
            help='retention window in days (OUTBOX["INBOX_RETENTION_DAYS"])',
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            help='records per transaction (OUTBOX["INBOX_PURGE_BATCH_SIZE"])',
        )

    def handle(self, *args: Any, **options: Any) -> None:
        days = options["older_than_days"]
        batch_size = options["batch_size"]
        if days is not None and days < 0:
            raise CommandError("--older-than-days must not be negative")
        if batch_size is not None and batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        deleted = purge_inbox(
            older_than=None if days is None else timedelta(days=days), batch_size=batch_size
        )
        self.stdout.write(f"deleted {deleted} inbox records")
