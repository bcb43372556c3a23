"""outbox.relay.debezium: the properties Debezium is started with (no Java needed)."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from outbox.relay import debezium


def test_the_source_reads_the_named_slot_and_publication_with_pgoutput_and_no_snapshot() -> None:
    properties = debezium.source_properties(slot="orders_relay", publication="orders_pub")
    assert properties["connector.class"] == "io.debezium.connector.postgresql.PostgresConnector"
    assert properties["plugin.name"] == "pgoutput"
    assert properties["slot.name"] == "orders_relay"
    assert properties["publication.name"] == "orders_pub"
    assert properties["publication.autocreate.mode"] == "disabled"
    assert properties["snapshot.mode"] == "no_data"
    assert properties["database.dbname"] == connection.settings_dict["NAME"]
    assert properties["table.include.list"] == "[^.]+[.]outbox_message"
    assert all(isinstance(value, str) for value in properties.values())


def test_the_defaults_come_from_the_settings(settings: Any) -> None:
    settings.OUTBOX = {**settings.OUTBOX, "WAL_SLOT_NAME": "s1", "WAL_PUBLICATION_NAME": "p1"}
    properties = debezium.source_properties()
    assert (properties["slot.name"], properties["publication.name"]) == ("s1", "p1")
    assert properties["name"] == debezium.engine_name("s1") == "outbox_wal.s1"


def test_offsets_are_in_postgresql_and_each_slot_only_touches_its_own_rows() -> None:
    properties = debezium.source_properties(slot="a_slot")
    assert properties["offset.storage"].endswith("JdbcOffsetBackingStore")
    assert properties["offset.storage.jdbc.table.name"] == "outbox_wal_offsets"
    assert properties["offset.storage.jdbc.connection.url"] == debezium.jdbc_url()
    prefix = debezium.offset_key_prefix("a_slot")
    assert prefix == '["outbox_wal.a_slot",'
    for statement in ("select", "delete"):
        assert (
            f"starts_with(offset_key, '{prefix}')"
            in (properties[f"offset.storage.jdbc.table.{statement}"])
        )
    # Java's String.format fills in the table name: no other percent sign may appear.
    for statement in ("ddl", "select", "delete"):
        assert properties[f"offset.storage.jdbc.table.{statement}"].count("%") == 1


@pytest.mark.parametrize("slot", ["Upper", "with-dash", "x" * 64, "quo'te"])
def test_a_slot_name_postgresql_would_refuse_is_refused_here(slot: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="WAL_SLOT_NAME"):
        debezium.source_properties(slot=slot)


def test_a_unix_socket_host_is_refused_with_an_explanation(settings: Any) -> None:
    original = connection.settings_dict["HOST"]
    connection.settings_dict["HOST"] = "/var/run/postgresql"
    try:
        with pytest.raises(ImproperlyConfigured, match="TCP"):
            debezium.source_properties()
    finally:
        connection.settings_dict["HOST"] = original
