"""``manage.py domain_events_project <dotted.path.Projection>``: run a projection over the store."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.module_loading import import_string

from domain_events.eventsourcing.projections import (
    Checkpoint,
    Projection,
    ProjectionProgress,
    run_projection,
)


class Command(BaseCommand):
    help = (
        "Feed a projection the stored events after its checkpoint, in global order, until caught"
        " up; --rebuild empties its read model and starts from the beginning."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("projection", help="dotted path of a Projection subclass")
        parser.add_argument(
            "--rebuild", action="store_true", help="reset the read model and replay every event"
        )
        parser.add_argument(
            "--after",
            metavar="TXID:POSITION",
            help="start after this checkpoint (as this command prints it), not the stored one",
        )
        parser.add_argument("--batch-size", type=int, default=500, help="events per transaction")
        parser.add_argument(
            "--follow",
            action="store_true",
            help="keep running: poll for new events every --interval seconds until interrupted",
        )
        parser.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
        parser.add_argument("--database", default="default", help="database alias")

    def handle(self, *args: Any, **options: Any) -> None:
        projection = self._projection(options["projection"])
        if options["rebuild"] and options["after"]:
            raise CommandError("--rebuild starts from the beginning; it cannot take --after")
        try:
            after = Checkpoint.parse(options["after"]) if options["after"] else None
        except ValueError as error:
            raise CommandError(str(error)) from error
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        started = time.monotonic()
        progress = run_projection(
            projection,
            rebuild=options["rebuild"],
            after=after,
            batch_size=options["batch_size"],
            on_batch=lambda p: self._report(p, started),
            using=options["database"],
        )
        self.stdout.write(
            f"{projection.name}: {progress.processed} events applied, caught up at"
            f" {progress.checkpoint}"
        )
        try:
            while options["follow"]:
                time.sleep(options["interval"])
                run_projection(
                    projection,
                    batch_size=options["batch_size"],
                    on_batch=lambda p: self._report(p, started),
                    using=options["database"],
                )
        except KeyboardInterrupt:
            self.stdout.write(f"{projection.name}: stopped")

    def _projection(self, path: str) -> Projection:
        try:
            cls = import_string(path)
        except ImportError as error:
            raise CommandError(f"cannot import {path!r}: {error}") from error
        if not (isinstance(cls, type) and issubclass(cls, Projection)):
            raise CommandError(f"{path} is not a Projection subclass")
        projection: Projection = cls()
        return projection

    def _report(self, progress: ProjectionProgress, started: float) -> None:
        elapsed = max(time.monotonic() - started, 1e-9)
        self.stdout.write(
            f"{progress.processed} applied, about {progress.remaining} left, at"
            f" {progress.checkpoint} ({progress.processed / elapsed:.0f} events/s)"
        )
