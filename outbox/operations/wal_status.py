"""The WAL relay's replication slot, seen from operations: its lag, and retiring it.

A logical replication slot makes PostgreSQL keep every byte of WAL from the slot's
``restart_lsn`` on, until its reader confirms it has read past it. A slot nobody reads keeps
WAL forever and fills the disk: the classic failure of change data capture. ``outbox_status``
reads the slot here and reports it unhealthy past ``WAL_MAX_LAG_BYTES`` / ``WAL_MAX_LAG_SECONDS``;
``outbox_wal_retire`` drops the slot, the publication and the stored offsets when the WAL
source is retired.

Lag in bytes is the WAL retained for the slot: ``pg_current_wal_lsn() - restart_lsn``. That is
what is on disk because of the slot, so it is what the threshold guards; the distance to
``confirmed_flush_lsn`` (what the reader has confirmed) is shown as well, and is smaller.

Lag in time is the age of the oldest ready outbox row, when ``RELAY_SOURCE`` is ``"wal"``: the
WAL relay marks a row published once the broker confirmed it, so a ready row is one the relay
has not got through yet, and its age bounds the slot's delay from above. PostgreSQL keeps no
commit time per WAL position (without ``track_commit_timestamp``), so nothing measures the
time of a slot that the relay does not read; for a slot left behind while the source is
``"poll"`` the time is not measured (``None``) and the bytes carry the alarm.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from django.db import connections

from outbox import conf
from outbox.common.database import is_postgresql, outbox_alias
from outbox.common.durations import format_duration
from outbox.common.sql import load_queries, rows_as
from outbox.relay.debezium import OFFSETS_TABLE, offset_key_prefix

__all__ = [
    "WAL_OFFSETS_TABLE",
    "SlotRow",
    "WalSlotStatus",
    "current_database",
    "delete_offsets",
    "format_bytes",
    "publication_exists",
    "read_slot",
    "slot_status",
    "stored_offsets",
    "table_exists",
]

#: Where the WAL relay's Debezium JDBC offset store keeps its offsets: one row set per slot,
#: told apart by how their ``offset_key`` starts (``outbox.relay.debezium``).
WAL_OFFSETS_TABLE = OFFSETS_TABLE

QUERIES = load_queries("outbox", "sql/wal_operations.sql")


@dataclass(frozen=True)
class SlotRow:
    """One row of ``pg_replication_slots``, with the WAL it holds back."""

    slot_name: str
    plugin: str | None
    slot_type: str
    database: str | None
    active: bool
    active_pid: int | None
    wal_status: str | None
    retained_bytes: int | None
    unconfirmed_bytes: int | None


@dataclass(frozen=True)
class WalSlotStatus:
    """The WAL slot as ``outbox_status`` shows it; ``problems`` is empty when healthy."""

    slot_name: str
    publication: str
    relay_source: str
    exists: bool
    active: bool = False
    active_pid: int | None = None
    plugin: str | None = None
    database: str | None = None
    wal_status: str | None = None
    retained_bytes: int | None = None
    unconfirmed_bytes: int | None = None
    lag_seconds: float | None = None
    publication_exists: bool = False
    max_lag_bytes: int = 0
    max_lag_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        """The status as JSON-ready values."""
        data = asdict(self)
        data["healthy"] = self.healthy
        return data


def read_slot(slot_name: str, using: str | None = None) -> SlotRow | None:
    """The replication slot ``slot_name`` (slot names are per cluster), or None."""
    with connections[outbox_alias(using)].cursor() as cursor:
        cursor.execute(QUERIES["slot"], {"slot_name": slot_name})
        rows = rows_as(cursor, SlotRow)
    return rows[0] if rows else None


def publication_exists(publication: str, using: str | None = None) -> bool:
    """Whether the outbox's database has the publication ``publication``."""
    return bool(_scalar("publication_exists", {"publication": publication}, using))


def table_exists(table: str, using: str | None = None) -> bool:
    """Whether ``table`` exists (on the search path) in the outbox's database."""
    return bool(_scalar("table_exists", {"table": table}, using))


def stored_offsets(slot_name: str, using: str | None = None) -> int:
    """How many offset rows the WAL relay reading ``slot_name`` stored (0 without a table)."""
    if not table_exists(WAL_OFFSETS_TABLE, using):
        return 0
    with connections[outbox_alias(using)].cursor() as cursor:
        cursor.execute(
            QUERIES["count_offsets"].format(table=_quoted(WAL_OFFSETS_TABLE, using)),
            {"prefix": offset_key_prefix(slot_name)},
        )
        found: int = cursor.fetchone()[0]
    return found


def delete_offsets(slot_name: str, using: str | None = None) -> tuple[int, bool]:
    """Delete the offsets stored for ``slot_name``, and the table once no slot has any left.
    Returns (rows deleted, whether the table was dropped)."""
    if not table_exists(WAL_OFFSETS_TABLE, using):
        return 0, False
    table = _quoted(WAL_OFFSETS_TABLE, using)
    with connections[outbox_alias(using)].cursor() as cursor:
        cursor.execute(
            QUERIES["delete_offsets"].format(table=table),
            {"prefix": offset_key_prefix(slot_name)},
        )
        deleted = cursor.rowcount
        cursor.execute(QUERIES["any_offsets"].format(table=table))
        if cursor.fetchone()[0]:
            return deleted, False
        cursor.execute(f"DROP TABLE {table}")
    return deleted, True


def current_database(using: str | None = None) -> str:
    """The name of the outbox's database, as PostgreSQL names it."""
    return str(_scalar("current_database", {}, using))


def slot_status(
    using: str | None = None, *, lag_seconds_if_wal: float | None = None
) -> WalSlotStatus | None:
    """The WAL slot's status, or None when there is nothing to show: the database is not
    PostgreSQL, or the slot does not exist and ``RELAY_SOURCE`` is not ``"wal"``.

    ``lag_seconds_if_wal`` is the age of the oldest ready row (``outbox_status`` has read it
    already); it is the slot's time lag when the source is ``"wal"``.
    """
    if not is_postgresql(using):
        return None
    slot_name = conf.get_str("WAL_SLOT_NAME")
    publication = conf.get_str("WAL_PUBLICATION_NAME")
    source = conf.get_str("RELAY_SOURCE")
    max_bytes = conf.get_int("WAL_MAX_LAG_BYTES")
    max_seconds = float(conf.get("WAL_MAX_LAG_SECONDS"))
    row = read_slot(slot_name, using)
    database = current_database(using)
    # Slot names are per cluster: a slot of that name in another database is another
    # project's (or another test database's), not this outbox's.
    foreign = row is not None and row.database not in (None, database)
    if (row is None or foreign) and source != "wal":
        return None
    has_publication = publication_exists(publication, using)
    if row is None or foreign:
        problem = (
            f"RELAY_SOURCE is 'wal' but the replication slot {slot_name!r} does not exist"
            " (no WAL relay has started, or the slot was dropped)"
            if row is None
            else f"the replication slot {slot_name!r} belongs to database {row.database!r},"
            f' not to {database!r}: give this outbox a slot of its own (OUTBOX["WAL_SLOT_NAME"])'
        )
        return WalSlotStatus(
            slot_name=slot_name,
            publication=publication,
            relay_source=source,
            exists=False,
            database=None if row is None else row.database,
            publication_exists=has_publication,
            max_lag_bytes=max_bytes,
            max_lag_seconds=max_seconds,
            problems=[problem],
        )
    lag_seconds = lag_seconds_if_wal if source == "wal" else None
    problems = _problems(row, lag_seconds, max_bytes, max_seconds)
    return WalSlotStatus(
        slot_name=slot_name,
        publication=publication,
        relay_source=source,
        exists=True,
        active=row.active,
        active_pid=row.active_pid,
        plugin=row.plugin,
        database=row.database,
        wal_status=row.wal_status,
        retained_bytes=row.retained_bytes,
        unconfirmed_bytes=row.unconfirmed_bytes,
        lag_seconds=lag_seconds,
        publication_exists=has_publication,
        max_lag_bytes=max_bytes,
        max_lag_seconds=max_seconds,
        problems=problems,
    )


def format_bytes(size: int | None) -> str:
    """``size`` in binary units for people: ``512 B``, ``3.2 MiB``, ``1.0 GiB``."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _problems(
    row: SlotRow, lag_seconds: float | None, max_bytes: int, max_seconds: float
) -> list[str]:
    # An inactive slot is not a problem by itself (a relay restarting, a deploy): the WAL it
    # retains is, and the bytes threshold catches it.
    name = row.slot_name
    problems: list[str] = []
    if row.wal_status == "lost":
        problems.append(
            f"replication slot {name!r} lost WAL it needed (wal_status 'lost'): the WAL relay"
            " cannot resume from it; retire it (outbox_wal_retire) and start again"
        )
    if row.retained_bytes is not None and row.retained_bytes > max_bytes:
        reader = "a WAL relay reads it" if row.active else "nothing reads it"
        problems.append(
            f"replication slot {name!r} retains {format_bytes(row.retained_bytes)} of WAL"
            f" (limit {format_bytes(max_bytes)}; {reader})"
        )
    if lag_seconds is not None and lag_seconds > max_seconds:
        problems.append(
            f"the WAL relay is {format_duration(round(lag_seconds))} behind: the oldest ready"
            f" row waits that long (limit {format_duration(round(max_seconds))})"
        )
    return problems


def _quoted(name: str, using: str | None) -> str:
    quoted: str = connections[outbox_alias(using)].ops.quote_name(name)
    return quoted


def _scalar(name: str, params: dict[str, Any], using: str | None) -> Any:
    with connections[outbox_alias(using)].cursor() as cursor:
        cursor.execute(QUERIES[name], params)
        return cursor.fetchone()[0]
