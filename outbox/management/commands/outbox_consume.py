"""``manage.py outbox_consume <consumer>``: run one consumer until SIGTERM / SIGINT."""

from __future__ import annotations

import logging
import signal
from argparse import ArgumentParser
from types import FrameType
from typing import Any

from django.core.management.base import CommandError

from outbox.common.durations import DURATION_SYNTAX, duration_argument
from outbox.consumer.loop import ConsumerLoop
from outbox.consumer.registry import load_handlers, registry
from outbox.consumer.topology import declare
from outbox.exceptions import UnknownConsumerError
from outbox.management.base import OutboxCommand, broker_address, count

logger = logging.getLogger("outbox.consumer")


class Command(OutboxCommand):
    help = (
        "Consume one consumer's queue: run its integration handlers exactly once per message"
        " (inbox), retry failures with a delay, dead-letter what cannot be processed."
    )
    console_logging = True

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("consumer", help="consumer name given to @integration_handler")
        parser.add_argument("--exchange", help='exchange to consume (OUTBOX["EXCHANGE"])')
        parser.add_argument(
            "--prefetch",
            type=int,
            metavar="N",
            help='messages RabbitMQ sends ahead of the acks (default OUTBOX["CONSUMER_PREFETCH"])',
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            metavar="N",
            help="deliveries already waiting processed in one transaction"
            ' (default OUTBOX["CONSUMER_BATCH_SIZE"])',
        )
        parser.add_argument(
            "--max-messages",
            type=int,
            metavar="N",
            help="exit after settling this many messages",
        )
        parser.add_argument(
            "--until-idle",
            type=duration_argument,
            metavar="DURATION",
            help=f"exit once no message has arrived for this long: {DURATION_SYNTAX}",
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
        for name in ("prefetch", "batch_size", "max_messages"):
            if options[name] is not None and options[name] < 1:
                raise CommandError(f"--{name.replace('_', '-')} must be at least 1")
        until_idle = options["until_idle"]

        if options["declare_only"]:
            topology = declare(spec.name, exchange=options["exchange"])
            self.say(f"declared {topology.queue} on exchange {topology.exchange}")
            return

        loop = ConsumerLoop(
            spec,
            exchange=options["exchange"],
            prefetch=options["prefetch"],
            batch_size=options["batch_size"],
            max_messages=options["max_messages"],
            until_idle=None if until_idle is None else until_idle.total_seconds(),
        )

        def request_stop(signum: int, _frame: FrameType | None) -> None:
            self.stderr.write(
                f"{signal.Signals(signum).name}: finishing the current batch"
                " (send it again to stop at once)"
            )
            loop.stop()
            # A second signal kills the process; the open transaction then rolls back and
            # RabbitMQ redelivers the message, as after a crash.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        logger.info(
            "%s: consuming queue %s from RabbitMQ at %s",
            spec.name,
            loop.topology.queue,
            broker_address(),
        )
        settled = loop.run()
        self.say(f"{spec.name}: {count(settled, 'message')} settled")
