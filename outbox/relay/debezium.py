"""Debezium's configuration for the WAL relay: the PostgreSQL source connector and the JDBC
offset store, as the ``dict[str, str]`` of properties Debezium's embedded engine takes.

Pure: nothing here connects to anything. ``outbox.relay.wal`` starts the embedded engine with
these properties, and ``manage.py outbox_debezium_config`` writes them into a Debezium Server
configuration (``debezium.source.`` + each key).

What the properties say (docs/relay.md, "WAL relay"):

- the connector reads the logical replication slot ``OUTBOX["WAL_SLOT_NAME"]`` with the
  built-in ``pgoutput`` plugin, through the publication ``OUTBOX["WAL_PUBLICATION_NAME"]``
  (``FOR TABLE outbox_message WITH (publish = 'insert')``), which the relay creates itself:
  Debezium's own creation of it is disabled;
- no snapshot: the slot starts at its creation, and older rows are the sweep's
  (``outbox.relay.wal``);
- offsets live in the PostgreSQL table ``outbox_wal_offsets`` of the same database, one row
  set per slot (the select and delete statements only touch rows whose key names this
  slot's engine), written at most once a second and only for batches RabbitMQ confirmed.
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from outbox import conf

__all__ = [
    "OFFSETS_TABLE",
    "engine_name",
    "jdbc_url",
    "offset_key_prefix",
    "source_properties",
]

#: The PostgreSQL table of Debezium's offsets (created by Debezium's JDBC store on first use).
OFFSETS_TABLE = "outbox_wal_offsets"

# PostgreSQL's rule for replication slot names; publications are held to the same rule here
# so that both can be written into SQL and Debezium's properties without quoting.
_NAME = re.compile(r"^[a-z0-9_]{1,63}$")

# The JDBC store formats each statement with the table name (Java's String.format, "%s"):
# a literal percent sign would break it, so the filters use starts_with, not LIKE.
_OFFSETS_DDL = (
    "CREATE TABLE IF NOT EXISTS %s (id VARCHAR(36) NOT NULL, offset_key VARCHAR(1255),"
    " offset_val VARCHAR(1255), record_insert_ts TIMESTAMP NOT NULL,"
    " record_insert_seq INTEGER NOT NULL, PRIMARY KEY (id))"
)


def engine_name(slot: str) -> str:
    """The Debezium engine (and topic prefix) name of the relay reading ``slot``: the
    namespace of its offsets in ``outbox_wal_offsets``."""
    return f"outbox_wal.{_checked_name(slot, 'WAL_SLOT_NAME')}"


def offset_key_prefix(slot: str) -> str:
    """How the ``offset_key`` of every offset row of ``slot``'s relay starts (Debezium keys
    an embedded engine's offsets by ``[<engine name>, {"server": <topic prefix>}]``)."""
    return f'["{engine_name(slot)}",'


def jdbc_url(alias: str = "default") -> str:
    """The JDBC URL of the database ``alias`` of ``settings.DATABASES`` (TCP only)."""
    database = _database(alias)
    url = f"jdbc:postgresql://{_host(alias)}:{_port(alias)}/{database['NAME']}"
    sslmode = (database.get("OPTIONS") or {}).get("sslmode")
    if sslmode:
        url += f"?sslmode={sslmode}"
    return url


def source_properties(
    alias: str = "default", *, slot: str | None = None, publication: str | None = None
) -> dict[str, str]:
    """Debezium's properties for the WAL relay reading the database ``alias``: the PostgreSQL
    connector on ``slot`` and ``publication`` (default ``OUTBOX["WAL_SLOT_NAME"]`` and
    ``OUTBOX["WAL_PUBLICATION_NAME"]``) and the JDBC offset store in that database.

    Every value is a string, as Java's ``Properties`` want them. The connection settings come
    from ``settings.DATABASES[alias]`` (``HOST`` must be a TCP host: Java has no Unix
    sockets); the user needs the ``REPLICATION`` attribute (or to be a superuser).
    """
    slot = _checked_name(slot or conf.get_str("WAL_SLOT_NAME"), "WAL_SLOT_NAME")
    publication = _checked_name(
        publication or conf.get_str("WAL_PUBLICATION_NAME"), "WAL_PUBLICATION_NAME"
    )
    database = _database(alias)
    name = engine_name(slot)
    from outbox.models import OutboxMessage  # the app registry must be ready first

    table = OutboxMessage._meta.db_table
    url = jdbc_url(alias)
    properties = {
        "name": name,
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "topic.prefix": name,
        "database.hostname": _host(alias),
        "database.port": _port(alias),
        "database.user": str(database.get("USER") or ""),
        "database.dbname": str(database["NAME"]),
        "plugin.name": "pgoutput",
        "slot.name": slot,
        "slot.drop.on.stop": "false",
        "publication.name": publication,
        "publication.autocreate.mode": "disabled",
        # Any schema: the table's name is what Django gave it; "[.]" needs no escaping in a
        # properties file.
        "table.include.list": f"[^.]+[.]{table}",
        # Inserts only (the publication sends nothing else either).
        "skipped.operations": "u,d,t",
        # Rows older than the slot are the sweep's; a snapshot would publish them twice.
        "snapshot.mode": "no_data",
        # The streaming loop sleeps this long when the slot has nothing new (default 500 ms,
        # which would be the relay's latency).
        "poll.interval.ms": "10",
        "max.batch.size": str(max(2048, conf.get_int("BATCH_SIZE"))),
        "max.queue.size": str(max(8192, 4 * conf.get_int("BATCH_SIZE"))),
        # A heartbeat gives the relay a record to commit when the outbox is quiet but the
        # database is not, so that the slot's confirmed position follows the WAL (otherwise
        # the server keeps all WAL written since the last outbox row).
        "heartbeat.interval.ms": "10000",
        # Reconnect for ever, quickly: the relay's job is to resume when PostgreSQL is back.
        "errors.max.retries": "-1",
        "errors.retry.delay.initial.ms": "300",
        "errors.retry.delay.max.ms": "2000",
        # The after-state as plain JSON, no schema beside it.
        "converter.schemas.enable": "false",
        "key.converter.schemas.enable": "false",
        "value.converter.schemas.enable": "false",
        # Offsets in PostgreSQL, one row set per slot. Debezium stores the offset of records
        # the relay handed back only, and the relay hands a batch back once RabbitMQ confirmed
        # it: whenever the store is written, it is never ahead of the broker. Writing it at
        # most once a second (not after every batch) keeps a transaction off each batch; a
        # crash re-reads at most that second more, with the same message ids.
        "offset.storage": "io.debezium.storage.jdbc.offset.JdbcOffsetBackingStore",
        "offset.flush.interval.ms": "1000",
        "offset.storage.jdbc.connection.url": url,
        "offset.storage.jdbc.connection.user": str(database.get("USER") or ""),
        # Debezium's JDBC store refuses an empty password; a server that asks for none (trust
        # authentication) ignores the placeholder.
        "offset.storage.jdbc.connection.password": str(database.get("PASSWORD") or "-"),
        "offset.storage.jdbc.table.name": OFFSETS_TABLE,
        "offset.storage.jdbc.table.ddl": _OFFSETS_DDL,
        "offset.storage.jdbc.table.select": (
            "SELECT id, offset_key, offset_val FROM %s"
            f" WHERE starts_with(offset_key, '{offset_key_prefix(slot)}')"
            " ORDER BY record_insert_ts, record_insert_seq"
        ),
        "offset.storage.jdbc.table.delete": (
            f"DELETE FROM %s WHERE starts_with(offset_key, '{offset_key_prefix(slot)}')"
        ),
    }
    password = database.get("PASSWORD")
    if password:
        properties["database.password"] = str(password)
    sslmode = (database.get("OPTIONS") or {}).get("sslmode")
    if sslmode:
        properties["database.sslmode"] = str(sslmode)
    return properties


def _host(alias: str) -> str:
    host = str(_database(alias).get("HOST") or "localhost")
    if host.startswith("/"):
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}]['HOST'] is the socket directory {host!r}: the WAL relay's"
            " Debezium connector (Java) reaches PostgreSQL over TCP only; set HOST and PORT"
        )
    return host


def _port(alias: str) -> str:
    return str(_database(alias).get("PORT") or "5432")


def _database(alias: str) -> dict[str, Any]:
    if alias not in settings.DATABASES:
        raise ImproperlyConfigured(f"the WAL relay's database {alias!r} is not in DATABASES")
    database: dict[str, Any] = connections[alias].settings_dict
    if connections[alias].vendor != "postgresql":
        raise ImproperlyConfigured(
            f"the WAL relay reads PostgreSQL's write-ahead log; DATABASES[{alias!r}] is"
            f" {connections[alias].vendor}"
        )
    return database


def _checked_name(name: str, setting: str) -> str:
    if not _NAME.match(name):
        raise ImproperlyConfigured(
            f'OUTBOX["{setting}"] must be 1 to 63 lowercase letters, digits or underscores'
            f" (PostgreSQL's rule for replication slot names); got {name!r}"
        )
    return name
