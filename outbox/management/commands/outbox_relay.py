"""``manage.py outbox_relay``: the low-latency relay worker; ``--once`` drains and exits."""

from __future__ import annotations

import logging
import signal
import threading
from argparse import ArgumentParser
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from outbox.common.database import is_postgresql
from outbox.relay import Relay

logger = logging.getLogger("outbox.relay")


class Command(BaseCommand):
    help = (
        "Publish ready outbox rows to RabbitMQ. Runs until SIGTERM/SIGINT, woken by"
        " PostgreSQL notifications when rows commit (other databases: polling, one relay only);"
        " --once drains what is ready and exits."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--once",
            action="store_true",
            help="publish everything ready now, print how many were published, and exit",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        relay = Relay()
        if not is_postgresql(relay.using):
            logger.warning(
                "the outbox is not on PostgreSQL: this relay polls every POLL_INTERVAL_SECONDS"
                " and must be the only one running (no SKIP LOCKED); fine for development only",
                extra={"event": "not_postgresql", "relay": relay.name},
            )
        try:
            if options["once"]:
                self._once(relay)
            else:
                self._run(relay)
        finally:
            relay.close()

    def _once(self, relay: Relay) -> None:
        result = relay.drain()
        if result.broker_error is not None:
            raise CommandError(
                f"published {result.published}, then the broker failed: {result.broker_error}"
            )
        self.stdout.write(f"published {result.published}")

    def _run(self, relay: Relay) -> None:
        stop = threading.Event()

        def request_stop(signum: int, frame: FrameType | None) -> None:
            # The batch in progress is finished (and settled) before the loop exits.
            stop.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        self.stdout.write(f"outbox relay {relay.name} running; SIGTERM or Ctrl-C stops it")
        self.stdout.flush()
        relay.run(stop.is_set)
        self.stdout.write("outbox relay stopped")
