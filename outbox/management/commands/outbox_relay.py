"""``manage.py outbox_relay``: the low-latency relay worker; ``--once`` drains and exits.

Exit status of ``--once`` (the first that applies): 4 the database cannot be used, 7 rows used
up their attempts and are failed, 5 RabbitMQ could not be reached (unsent rows released,
attempts unchanged), 6 rows were refused (unroutable, nack) and wait for a retry, 0 otherwise.

``--source wal`` (or ``OUTBOX["RELAY_SOURCE"] = "wal"``) runs the WAL relay instead
(``outbox.relay.wal``): Debezium reads committed rows from PostgreSQL's write-ahead log.
"""

from __future__ import annotations

import logging
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import CommandError

from outbox import conf
from outbox.management.base import (
    EXIT_BROKER_UNAVAILABLE,
    OutboxCommand,
    broker_address,
    database_address,
    stop_on_signals,
    warn_unless_postgresql,
)
from outbox.relay import Relay
from outbox.relay.loop import DrainResult

logger = logging.getLogger("outbox.relay")

EXIT_ROWS_RETRIED = 6
EXIT_ROWS_FAILED = 7


class Command(OutboxCommand):
    help = (
        "Publish ready outbox rows to RabbitMQ. Runs until SIGTERM/SIGINT, woken by"
        " PostgreSQL notifications when rows commit (other databases: polling, one relay only);"
        " --once drains what is ready and exits: 0 all published, 6 rows refused and retried"
        " later, 7 rows failed, 5 broker unreachable, 4 database unreachable."
    )
    console_logging = True

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--once",
            action="store_true",
            help="publish everything ready now, print published/retried/failed/released"
            " counts, and exit (non-zero when rows were refused or failed)",
        )
        parser.add_argument(
            "--source",
            choices=["poll", "wal"],
            help='where committed rows are found: "poll" (claims on the outbox table) or'
            ' "wal" (Debezium reads the write-ahead log; needs the wal extra and Java 17);'
            ' default OUTBOX["RELAY_SOURCE"]',
        )

    def handle(self, *args: Any, **options: Any) -> None:
        source = options["source"] or conf.get_str("RELAY_SOURCE")
        if source == "wal":
            if options["once"]:
                raise CommandError("--once drains with the polling relay; drop --source wal")
            self._run_wal()
            return
        relay = Relay()
        warn_unless_postgresql(
            logger,
            "the outbox",
            "this relay polls every POLL_INTERVAL_SECONDS and must be the only one running"
            " (no SKIP LOCKED)",
            relay.using,
            relay=relay.name,
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
        summary = _summary(result)
        if result.failed:
            raise CommandError(
                f"{summary}: rows used up their attempts and are failed; see outbox_status",
                returncode=EXIT_ROWS_FAILED,
            )
        if result.broker_error is not None:
            raise CommandError(
                f"{summary}: cannot reach RabbitMQ at {broker_address()}: {result.broker_error}",
                returncode=EXIT_BROKER_UNAVAILABLE,
            )
        if result.retried:
            raise CommandError(
                f"{summary}: rows were refused by RabbitMQ and wait for a retry;"
                " see the log above and outbox_status",
                returncode=EXIT_ROWS_RETRIED,
            )
        self.say(summary)

    def _run_wal(self) -> None:
        from outbox.relay.wal import WalRelay, WalRelayUnavailable, require_wal_support

        try:
            require_wal_support()
        except WalRelayUnavailable as error:
            raise CommandError(str(error)) from error
        relay = WalRelay()
        stop = stop_on_signals()
        self.say(
            f"outbox WAL relay {relay.name} running on slot {relay.slot!r};"
            " SIGTERM or Ctrl-C stops it"
        )
        relay.run(stop.is_set)
        self.say("outbox WAL relay stopped")

    def _run(self, relay: Relay) -> None:
        stop = stop_on_signals()
        self.say(f"outbox relay {relay.name} running; SIGTERM or Ctrl-C stops it")
        logger.info(
            "relay %s: from the database at %s to RabbitMQ at %s",
            relay.name,
            database_address(relay.using),
            broker_address(),
            extra={"event": "start", "relay": relay.name},
        )
        relay.run(stop.is_set)
        self.say("outbox relay stopped")


def _summary(result: DrainResult) -> str:
    return (
        f"published {result.published}, retried {result.retried}, failed {result.failed},"
        f" released {result.released}"
    )
