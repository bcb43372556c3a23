"""``manage.py outbox_wal_retire``: drop what the WAL source left in PostgreSQL.

When ``outbox_relay --source wal`` is retired (back to polling, or moved to Debezium Server),
its replication slot keeps WAL on disk forever unless it is dropped. This command drops the
slot ``OUTBOX["WAL_SLOT_NAME"]``, the publication ``OUTBOX["WAL_PUBLICATION_NAME"]`` and the
relay's stored offsets (its rows of the ``outbox_wal_offsets`` table, and the table once no
other slot has rows in it), after asking (``--noinput`` does not ask). Rows the WAL relay had
not published stay ``ready``: the polling relay publishes them.

A slot that a WAL relay is reading (active) is not dropped: stop the relay first. ``--force``
terminates the WAL sender serving it, for a reader that is gone but whose connection
PostgreSQL has not noticed yet; a relay still running would take the slot again. Nothing to
drop is not an error: the command says so and exits 0.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db import connections

from outbox import conf
from outbox.common.database import is_postgresql, outbox_alias
from outbox.management.base import OutboxCommand, add_noinput_argument, count
from outbox.operations import wal_status

# How long --force waits for PostgreSQL to release the slot of a terminated WAL sender.
RELEASE_TIMEOUT_SECONDS = 10.0


class Command(OutboxCommand):
    help = (
        "Drop the WAL relay's replication slot, its publication and its stored offsets, when"
        " the WAL source is retired. Refuses while a relay reads the slot unless --force."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        add_noinput_argument(parser, what="drop them")
        parser.add_argument(
            "--force",
            action="store_true",
            help="terminate the WAL sender of an active slot (a reader still connected) first",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        alias = outbox_alias()
        if not is_postgresql(alias):
            raise CommandError("the outbox database is not PostgreSQL: there is no WAL source")
        slot_name = conf.get_str("WAL_SLOT_NAME")
        publication = conf.get_str("WAL_PUBLICATION_NAME")
        if conf.get_str("RELAY_SOURCE") == "wal":
            self.say(
                "note: RELAY_SOURCE is still 'wal': the next outbox_relay creates the slot"
                ' again; set OUTBOX["RELAY_SOURCE"] = "poll" to retire the WAL source'
            )
        slot = wal_status.read_slot(slot_name, alias)
        database = wal_status.current_database(alias)
        if slot is not None and slot.database not in (None, database):
            raise CommandError(
                f"replication slot {slot_name!r} belongs to database {slot.database!r}, not to"
                f" the outbox's {database!r}: drop it from there, or set"
                ' OUTBOX["WAL_SLOT_NAME"] to the slot of this database'
            )
        has_publication = wal_status.publication_exists(publication, alias)
        offsets = wal_status.stored_offsets(slot_name, alias)
        if slot is None and not has_publication and not offsets:
            self.say(
                f"nothing to retire: no replication slot {slot_name!r}, no publication"
                f" {publication!r}, no stored offsets of the slot"
            )
            return
        if slot is not None and slot.active and not options["force"]:
            raise CommandError(
                f"replication slot {slot_name!r} is active (WAL sender pid {slot.active_pid}):"
                " a WAL relay is reading it; stop the relay first, or pass --force to"
                " terminate the WAL sender"
            )
        what = _listing(slot, slot_name, publication, has_publication, offsets)
        if options["interactive"]:
            self._confirm(f"Drop {what}? [y/N] ")
        if slot is not None:
            if slot.active and slot.active_pid is not None:
                self._terminate(slot_name, slot.active_pid, alias)
            with connections[alias].cursor() as cursor:
                cursor.execute(wal_status.QUERIES["drop_slot"], {"slot_name": slot_name})
            self.say(
                f"dropped replication slot {slot_name!r}"
                f" (it retained {wal_status.format_bytes(slot.retained_bytes)} of WAL)"
            )
        if has_publication:
            quote = connections[alias].ops.quote_name
            with connections[alias].cursor() as cursor:
                cursor.execute(f"DROP PUBLICATION IF EXISTS {quote(publication)}")
            self.say(f"dropped publication {publication!r}")
        if offsets:
            deleted, dropped_table = wal_status.delete_offsets(slot_name, alias)
            table = wal_status.WAL_OFFSETS_TABLE
            self.say(
                f"dropped the stored offsets ({count(deleted, 'row')} of {table}"
                + (f"; {table} was empty then and is dropped too)" if dropped_table else ")")
            )

    def _terminate(self, slot_name: str, pid: int, alias: str) -> None:
        with connections[alias].cursor() as cursor:
            cursor.execute(wal_status.QUERIES["terminate_backend"], {"pid": pid})
        self.say(f"terminated the WAL sender (pid {pid}) reading {slot_name!r}")
        deadline = time.monotonic() + RELEASE_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            slot = wal_status.read_slot(slot_name, alias)
            if slot is None or not slot.active:
                return
            time.sleep(0.1)
        raise CommandError(
            f"replication slot {slot_name!r} is still active after its WAL sender was"
            " terminated: a WAL relay took it again; stop it first"
        )

    def _confirm(self, question: str) -> None:
        if not sys.stdin.isatty():
            raise CommandError("not asking on a non-interactive input: pass --noinput to drop them")
        if input(question).strip().lower() not in {"y", "yes"}:
            raise CommandError("retire cancelled")


def _listing(
    slot: wal_status.SlotRow | None,
    slot_name: str,
    publication: str,
    has_publication: bool,
    offsets: int,
) -> str:
    parts = []
    if slot is not None:
        state = f"active, WAL sender pid {slot.active_pid}" if slot.active else "inactive"
        parts.append(
            f"replication slot {slot_name!r} ({state},"
            f" retaining {wal_status.format_bytes(slot.retained_bytes)} of WAL)"
        )
    if has_publication:
        parts.append(f"publication {publication!r}")
    if offsets:
        parts.append(
            f"the slot's stored offsets ({count(offsets, 'row')} of {wal_status.WAL_OFFSETS_TABLE})"
        )
    return ", ".join(parts)
