"""``manage.py outbox_replay``: have the relay publish chosen events again.

By default replayed rows keep their ``message_id`` (consumers with an inbox skip what they
already processed); ``--new-ids`` inserts copies with new ids and an ``x-replay-of`` header.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, time
from typing import Any
from uuid import UUID

from django.core.management.base import CommandError, CommandParser
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from outbox.management.base import OutboxCommand, add_noinput_argument, count
from outbox.models import OutboxMessage
from outbox.operations import actions

REPLAYABLE = [OutboxMessage.Status.PUBLISHED, OutboxMessage.Status.FAILED]
PROGRESS_BAR_WIDTH = 30


class Command(OutboxCommand):
    help = (
        "Re-publish outbox events chosen by message id, event type, aggregate, status and"
        " creation time. Keeps message ids unless --new-ids."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        chosen = parser.add_argument_group("which rows (combined with AND)")
        chosen.add_argument(
            "--message-id",
            type=UUID,
            nargs="+",
            action="extend",
            default=[],
            metavar="UUID",
            help="the rows with these message ids (repeatable)",
        )
        chosen.add_argument(
            "--event-type",
            nargs="+",
            action="extend",
            default=[],
            metavar="TYPE",
            help="rows of these event types, e.g. orders.order_placed (repeatable)",
        )
        chosen.add_argument(
            "--aggregate-type",
            metavar="TYPE",
            help="rows of this aggregate type (with --aggregate-id)",
        )
        chosen.add_argument(
            "--aggregate-id", metavar="ID", help="rows of this aggregate id (with --aggregate-type)"
        )
        chosen.add_argument(
            "--status",
            choices=REPLAYABLE,
            nargs="+",
            action="extend",
            default=[],
            help="rows in these statuses (default: published)",
        )
        chosen.add_argument(
            "--since",
            type=_aware_datetime,
            help="created at or after (ISO 8601 date or date and time)",
        )
        chosen.add_argument("--until", type=_aware_datetime, help="created before (ISO 8601)")
        chosen.add_argument("--all", action="store_true", help="every row of the chosen status(es)")
        parser.add_argument(
            "--new-ids",
            action="store_true",
            help="insert copies with new message ids and an x-replay-of header",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="list the rows that would be replayed"
        )
        add_noinput_argument(parser, what="replay")
        parser.add_argument(
            "--batch-size",
            type=int,
            default=actions.DEFAULT_BATCH_SIZE,
            metavar="N",
            help=f"rows per transaction (default {actions.DEFAULT_BATCH_SIZE})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        chosen = _chosen(options)
        total = chosen.count()
        how = "as new messages (new ids)" if options["new_ids"] else "keeping their message ids"
        if options["dry_run"]:
            for row in chosen.order_by("pk").iterator():
                self.stdout.write(
                    f"{row.message_id}  {row.status:<9}  {row.created_at.isoformat()}"
                    f"  {row.event_type}  {row.ordering_key or '-'}"
                )
            self.say(f"{count(total, 'message')} would be replayed {how}")
            return
        if total == 0:
            self.say("no message matches; nothing replayed")
            return
        if options["interactive"]:
            self._confirm(f"Replay {count(total, 'message')} {how}? [y/N] ")

        progress = _Progress(self.stderr, total, verbosity=self.verbosity)
        replayed = actions.replay(
            chosen,
            new_ids=options["new_ids"],
            batch_size=options["batch_size"],
            on_batch=progress.advance,
        )
        progress.finish()
        self.say(f"replayed {count(replayed, 'message')} {how}")
        if replayed < total:
            self.say(
                f"skipped {count(total - replayed, 'message')}: they changed status meanwhile"
                " or a relay held them"
            )

    def _confirm(self, question: str) -> None:
        if not sys.stdin.isatty():
            raise CommandError("not asking on a non-interactive input: pass --noinput to replay")
        if input(question).strip().lower() not in {"y", "yes"}:
            raise CommandError("replay cancelled")


def _chosen(options: dict[str, Any]) -> QuerySet[OutboxMessage]:
    selectors = ["message_id", "event_type", "aggregate_type", "aggregate_id", "since", "until"]
    if not options["all"] and not any(options[name] for name in selectors):
        raise CommandError(
            "choose rows with --message-id, --event-type, --aggregate-type/--aggregate-id,"
            " --since/--until, or pass --all to replay every published row"
        )
    if (options["aggregate_id"] is None) != (options["aggregate_type"] is None):
        raise CommandError("--aggregate-type and --aggregate-id go together")
    rows = OutboxMessage.objects.filter(status__in=options["status"] or ["published"])
    if options["message_id"]:
        rows = rows.filter(message_id__in=options["message_id"])
    if options["event_type"]:
        rows = rows.filter(event_type__in=options["event_type"])
    if options["aggregate_type"] is not None:
        rows = rows.filter(
            aggregate_type=options["aggregate_type"], aggregate_id=options["aggregate_id"]
        )
    if options["since"]:
        rows = rows.filter(created_at__gte=options["since"])
    if options["until"]:
        rows = rows.filter(created_at__lt=options["until"])
    return rows


def _aware_datetime(text: str) -> datetime:
    """An ISO 8601 date and time, or a date (midnight); naive values are in TIME_ZONE."""
    try:
        value = parse_datetime(text)
        if value is None and (day := parse_date(text)) is not None:
            value = datetime.combine(day, time.min)
    except ValueError:
        value = None
    if value is None:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date and time: {text!r}")
    return value if timezone.is_aware(value) else timezone.make_aware(value)


class _Progress:
    """Progress of a replay on stderr, after each batch: a bar redrawn in place on a terminal
    (from -v 1), one line per batch elsewhere (from -v 2), so that a pipe or a log file never
    receives carriage returns."""

    def __init__(self, stream: Any, total: int, *, verbosity: int) -> None:
        self.stream = stream
        self.total = total
        self.done = 0
        self.on_terminal = stream.isatty()
        self.verbosity = verbosity
        self.drawn = False

    def advance(self, ids: list[int]) -> None:
        self.done += len(ids)
        if self.on_terminal and self.verbosity >= 1:
            filled = PROGRESS_BAR_WIDTH * self.done // self.total
            bar = "#" * filled + "." * (PROGRESS_BAR_WIDTH - filled)
            self.stream.write(f"\r[{bar}] {self.done}/{self.total}", ending="")
            self.stream.flush()
            self.drawn = True
        elif self.verbosity >= 2:
            self.stream.write(f"replayed {self.done}/{self.total}")

    def finish(self) -> None:
        if self.drawn:
            self.stream.write("")
