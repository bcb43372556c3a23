"""``manage.py outbox_debezium_config``: print a Debezium Server ``application.properties``
that reads this project's outbox table and publishes to RabbitMQ.

The PostgreSQL source is the embedded WAL relay's (slot, publication, offsets in PostgreSQL),
the outbox event router maps this project's columns, and the RabbitMQ sink connects with
``OUTBOX["BROKER_URL"]``. Passwords are written as environment placeholders
(``${OUTBOX_DB_PASSWORD}``, ``${OUTBOX_BROKER_PASSWORD}``) unless ``--include-secrets``.
What Debezium Server cannot reproduce of the relays' wire format is listed in the file's
comments and in docs/relay.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import CommandError, CommandParser

from outbox.common.database import outbox_alias
from outbox.management.base import OutboxCommand
from outbox.operations import debezium_server


class Command(OutboxCommand):
    help = (
        "Print a Debezium Server application.properties (PostgreSQL source, outbox event"
        " router for this project's columns, RabbitMQ sink). Secrets are environment"
        " placeholders unless --include-secrets."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--slot",
            help='replication slot Debezium Server reads (default OUTBOX["WAL_SLOT_NAME"])',
        )
        parser.add_argument(
            "--publication",
            help='publication of the outbox table (default OUTBOX["WAL_PUBLICATION_NAME"])',
        )
        parser.add_argument(
            "--database",
            default=None,
            help="database alias of the outbox (default: the one the router picks)",
        )
        parser.add_argument(
            "--include-secrets",
            action="store_true",
            help="write the database and broker passwords instead of environment placeholders",
        )
        parser.add_argument(
            "--output",
            "-o",
            type=Path,
            help="write the file there instead of printing it",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        text = debezium_server.render(
            outbox_alias(options["database"]),
            slot=options["slot"],
            publication=options["publication"],
            include_secrets=options["include_secrets"],
        )
        output: Path | None = options["output"]
        if output is None:
            self.stdout.write(text, ending="")
            return
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as error:
            raise CommandError(f"cannot write {output}: {error.strerror}") from error
        if options["include_secrets"]:
            output.chmod(0o600)
        self.say(f"wrote {output}")
