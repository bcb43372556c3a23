"""``manage.py outbox_consume <consumer>``: run one consumer until SIGTERM / SIGINT."""

from __future__ import annotations

import signal
from argparse import ArgumentParser
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from outbox.consumer.loop import ConsumerLoop
from outbox.consumer.registry import load_handlers, registry
from outbox.consumer.topology import declare
from outbox.exceptions import UnknownConsumerError


class Command(BaseCommand):
    help = (
        "Consume one consumer's queue: run its integration handlers exactly once per message"
        " (inbox), retry failures with a delay, dead-letter what cannot be processed."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("consumer", help="consumer name given to @integration_handler")
        parser.add_argument("--exchange", help='exchange to consume (OUTBOX["EXCHANGE"])')
        parser.add_argument("--prefetch", type=int, help='OUTBOX["CONSUMER_PREFETCH"]')
        parser.add_argument(
            "--max-messages", type=int, help="exit after settling this many messages"
        )
        parser.add_argument(
            "--until-idle",
            type=float,
            metavar="SECONDS",
            help="exit once no message has arrived for this many seconds",
        )
        parser.add_argument(
            "--declare-only",
            action="store_true",
            help="declare the exchange, queues and bindings, then exit",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        load_handlers()
        try:
            spec = registry.get(options["consumer"])
        except UnknownConsumerError as error:
            raise CommandError(str(error)) from error
        for name in ("prefetch", "max_messages"):
            if options[name] is not None and options[name] < 1:
                raise CommandError(f"--{name.replace('_', '-')} must be at least 1")
        if options["until_idle"] is not None and options["until_idle"] < 0:
            raise CommandError("--until-idle must not be negative")

        if options["declare_only"]:
            topology = declare(spec.name, exchange=options["exchange"])
            self.stdout.write(f"declared {topology.queue} on exchange {topology.exchange}")
            return

        loop = ConsumerLoop(
            spec,
            exchange=options["exchange"],
            prefetch=options["prefetch"],
            max_messages=options["max_messages"],
            until_idle=options["until_idle"],
        )

        def request_stop(signum: int, _frame: FrameType | None) -> None:
            self.stderr.write(
                f"{signal.Signals(signum).name}: finishing the current message"
                " (send it again to stop at once)"
            )
            loop.stop()
            # A second signal kills the process; the open transaction then rolls back and
            # RabbitMQ redelivers the message, as after a crash.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        settled = loop.run()
        self.stdout.write(f"{spec.name}: {settled} messages settled")
