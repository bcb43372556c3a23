"""The WAL relay's replication slot in operations: outbox_status reports its lag, and
outbox_wal_retire drops it with the publication and the stored offsets."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from outbox.models import OutboxMessage
from outbox.operations import wal_status
from outbox.relay.debezium import offset_key_prefix, source_properties
from tests.operations.conftest import MakeMessage
from tests.wal_support import connect, drop_slot_quietly, logical_slot, requires_logical_wal

pytestmark = pytest.mark.django_db


def run(*args: str, **options: Any) -> tuple[str, str, int]:
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command(*args, stdout=out, stderr=err, **options)
    except SystemExit as exit:
        return out.getvalue(), err.getvalue(), int(exit.code or 0)
    return out.getvalue(), err.getvalue(), 0


@pytest.fixture
def names(settings: Any) -> Iterator[tuple[str, str]]:
    """A slot and publication name of this test's own (slot names are per cluster)."""
    suffix = uuid.uuid4().hex[:10]
    slot, publication = f"walops_slot_{suffix}", f"walops_pub_{suffix}"
    settings.OUTBOX = {
        **settings.OUTBOX,
        "WAL_SLOT_NAME": slot,
        "WAL_PUBLICATION_NAME": publication,
    }
    try:
        yield slot, publication
    finally:
        drop_slot_quietly(slot)


def emit_wal() -> None:
    """Write a little WAL, so a slot created before has something to retain."""
    with connect() as other:
        other.execute("SELECT pg_logical_emit_message(false, 'walops-test', 'x')")


# --- outbox_status ---


def test_no_slot_and_the_polling_source_show_nothing_of_wal(names: tuple[str, str]) -> None:
    output, _, code = run("outbox_status")
    as_json, _, _ = run("outbox_status", "--json")

    assert code == 0
    assert "WAL slot" not in output
    assert json.loads(as_json)["wal_slot"] is None


def test_a_missing_slot_is_a_problem_when_the_source_is_wal(
    names: tuple[str, str], settings: Any
) -> None:
    slot, _ = names
    settings.OUTBOX = {**settings.OUTBOX, "RELAY_SOURCE": "wal"}

    output, _, code = run("outbox_status", "--json")

    data = json.loads(output)
    assert code == 8
    assert data["healthy"] is False
    assert data["wal_slot"]["exists"] is False
    assert any(f"{slot!r} does not exist" in problem for problem in data["problems"])
    table, _, _ = run("outbox_status")
    assert f"WAL slot {slot}" in table
    assert "missing" in table


@requires_logical_wal
def test_a_slot_nobody_reads_is_unhealthy_past_the_byte_limit(
    names: tuple[str, str], settings: Any, make_message: MakeMessage
) -> None:
    slot, _ = names
    with logical_slot(slot):
        emit_wal()
        make_message(OutboxMessage.Status.READY)
        healthy, _, healthy_code = run("outbox_status", "--json")
        settings.OUTBOX = {**settings.OUTBOX, "WAL_MAX_LAG_BYTES": 1}
        output, _, code = run("outbox_status", "--json")
        table, _, _ = run("outbox_status")

    assert healthy_code == 0, healthy
    data = json.loads(output)
    assert code == 8
    slot_data = data["wal_slot"]
    assert slot_data["exists"] is True
    assert slot_data["active"] is False
    assert slot_data["retained_bytes"] > 0
    assert slot_data["unconfirmed_bytes"] <= slot_data["retained_bytes"]
    # A slot left behind while the source is polling: no time is measured for it.
    assert slot_data["lag_seconds"] is None
    assert any("nothing reads it" in problem for problem in data["problems"])
    assert f"WAL slot {slot}" in table
    assert "inactive" in table


@requires_logical_wal
def test_the_wal_source_lags_by_its_oldest_ready_row(
    names: tuple[str, str], settings: Any, make_message: MakeMessage
) -> None:
    slot, _ = names
    settings.OUTBOX = {**settings.OUTBOX, "RELAY_SOURCE": "wal", "WAL_MAX_LAG_SECONDS": 60}
    with logical_slot(slot):
        make_message(OutboxMessage.Status.READY, age=timedelta(seconds=90))
        output, _, code = run("outbox_status", "--json")
        settings.OUTBOX = {**settings.OUTBOX, "WAL_MAX_LAG_SECONDS": 300}
        _, _, relaxed_code = run("outbox_status", "--json")

    data = json.loads(output)
    assert code == 8  # the backlog (1 at 5 min) is not stale yet; the WAL limit is 60 s
    assert data["wal_slot"]["lag_seconds"] >= 90
    assert any("behind" in problem for problem in data["problems"])
    assert relaxed_code == 0


@requires_logical_wal
def test_a_slot_of_that_name_in_another_database_is_not_this_outbox_s(
    names: tuple[str, str], settings: Any
) -> None:
    slot, _ = names
    with logical_slot(slot, dbname="postgres"):
        polling, _, polling_code = run("outbox_status", "--json")
        settings.OUTBOX = {**settings.OUTBOX, "RELAY_SOURCE": "wal"}
        wal, _, wal_code = run("outbox_status", "--json")
        with pytest.raises(CommandError, match="belongs to database 'postgres'"):
            call_command("outbox_wal_retire", "--noinput", stdout=io.StringIO())

    assert polling_code == 0
    assert json.loads(polling)["wal_slot"] is None
    assert wal_code == 8
    assert any("belongs to database 'postgres'" in p for p in json.loads(wal)["problems"])


def test_the_slot_bit_adds_to_the_others(
    names: tuple[str, str], settings: Any, make_message: MakeMessage
) -> None:
    settings.OUTBOX = {**settings.OUTBOX, "RELAY_SOURCE": "wal"}
    make_message(OutboxMessage.Status.FAILED)

    _, _, code = run("outbox_status")

    assert code == 2 | 8


# --- outbox_wal_retire ---


def create_publication(name: str) -> None:
    with connect() as other:
        other.execute(f'CREATE PUBLICATION "{name}" FOR TABLE outbox_message')


def create_offsets_table(*slots: str) -> None:
    """The JDBC offset store's table as Debezium creates it, with an offset row for each of
    ``slots``."""
    ddl = source_properties()["offset.storage.jdbc.table.ddl"]
    with connect() as other:
        other.execute(ddl.replace("%s", wal_status.WAL_OFFSETS_TABLE))
        for slot in slots:
            other.execute(
                f"INSERT INTO {wal_status.WAL_OFFSETS_TABLE}"
                " (id, offset_key, offset_val, record_insert_ts, record_insert_seq)"
                " VALUES (%s, %s, '{}', now(), 1)",
                [uuid.uuid4().hex, offset_key_prefix(slot) + '{"server":"x"}]'],
            )


def drop_leftovers(publication: str) -> None:
    with connect() as other:
        other.execute(f'DROP PUBLICATION IF EXISTS "{publication}"')
        other.execute(f"DROP TABLE IF EXISTS {wal_status.WAL_OFFSETS_TABLE}")


@requires_logical_wal
@pytest.mark.django_db(transaction=True)
def test_retire_drops_slot_publication_and_offsets_and_is_idempotent(
    names: tuple[str, str],
) -> None:
    slot, publication = names
    try:
        with logical_slot(slot):
            create_publication(publication)
            create_offsets_table(slot, "another_slot")

            output, _, code = run("outbox_wal_retire", "--noinput")

            assert code == 0
            assert wal_status.read_slot(slot) is None
            assert not wal_status.publication_exists(publication)
            assert wal_status.stored_offsets(slot) == 0
            # Another slot's offsets stay, and so does their table.
            assert wal_status.stored_offsets("another_slot") == 1
            assert f"dropped replication slot {slot!r}" in output
            assert f"dropped publication {publication!r}" in output
            assert "dropped the stored offsets (1 row of outbox_wal_offsets)" in output

        again, _, again_code = run("outbox_wal_retire", "--noinput")
        assert again_code == 0
        assert "nothing to retire" in again

        # The last slot's offsets go with their table.
        create_offsets_table(slot)
        with connect() as other:
            other.execute(
                f"DELETE FROM {wal_status.WAL_OFFSETS_TABLE} WHERE offset_key LIKE '%another%'"
            )
        last, _, _ = run("outbox_wal_retire", "--noinput")
        assert "outbox_wal_offsets was empty then and is dropped too" in last
        assert not wal_status.table_exists(wal_status.WAL_OFFSETS_TABLE)
    finally:
        drop_leftovers(publication)


@requires_logical_wal
@pytest.mark.django_db(transaction=True)
def test_retire_refuses_an_active_slot_unless_forced(names: tuple[str, str]) -> None:
    slot, publication = names
    with logical_slot(slot):
        create_publication(publication)
        reader = subprocess.Popen(
            [
                "pg_recvlogical",
                *_connection_arguments(),
                "--slot",
                slot,
                "--start",
                "--no-loop",
                "-o",
                "proto_version=1",
                "-o",
                f"publication_names={publication}",
                "-f",
                "-",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_until_active(slot)
            with pytest.raises(CommandError, match="is active") as refused:
                call_command("outbox_wal_retire", "--noinput", stdout=io.StringIO())
            assert "--force" in str(refused.value)
            assert wal_status.read_slot(slot) is not None

            output, _, code = run("outbox_wal_retire", "--noinput", "--force")

            assert code == 0
            assert "terminated the WAL sender" in output
            assert wal_status.read_slot(slot) is None
        finally:
            reader.kill()
            reader.wait()
            drop_leftovers(publication)


@requires_logical_wal
def test_retire_asks_first_and_refuses_without_a_terminal(names: tuple[str, str]) -> None:
    slot, _ = names
    with logical_slot(slot):
        with pytest.raises(CommandError, match="--noinput"):
            call_command("outbox_wal_retire", stdout=io.StringIO())
        assert wal_status.read_slot(slot) is not None


def test_retire_warns_while_the_source_is_still_wal(names: tuple[str, str], settings: Any) -> None:
    settings.OUTBOX = {**settings.OUTBOX, "RELAY_SOURCE": "wal"}

    output, _, code = run("outbox_wal_retire", "--noinput")

    assert code == 0
    assert "RELAY_SOURCE is still 'wal'" in output


def _connection_arguments() -> list[str]:
    database = connection.settings_dict
    return [
        "-h",
        str(database.get("HOST") or "127.0.0.1"),
        "-p",
        str(database.get("PORT") or "5432"),
        "-U",
        str(database.get("USER") or "postgres"),
        "-d",
        str(database["NAME"]),
    ]


def _wait_until_active(slot: str) -> None:
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        row = wal_status.read_slot(slot)
        if row is not None and row.active:
            return
        time.sleep(0.05)
    raise AssertionError(f"pg_recvlogical did not start reading {slot} ({sys.executable})")


def test_a_slot_that_cannot_be_read_matters_only_for_the_wal_source(
    names: tuple[str, str], settings: Any
) -> None:
    from unittest import mock

    from django.db import DatabaseError

    failing = mock.patch.object(
        wal_status, "read_slot", side_effect=DatabaseError("recovery is in progress")
    )
    with failing:
        polling, _, polling_code = run("outbox_status", "--json")
        settings.OUTBOX = {**settings.OUTBOX, "RELAY_SOURCE": "wal"}
        wal, _, wal_code = run("outbox_status", "--json")

    assert polling_code == 0
    assert json.loads(polling)["wal_slot"] is None
    assert wal_code == 8
    assert json.loads(wal)["problems"] == [
        "cannot read the WAL relay's replication slot: recovery is in progress"
    ]


# --- Prometheus ---


@requires_logical_wal
def test_the_backlog_collector_reports_the_wal_the_slot_retains(names: tuple[str, str]) -> None:
    from prometheus_client import CollectorRegistry

    from outbox.operations import metrics

    slot, _ = names
    registry = CollectorRegistry()
    metrics.register_backlog_collector(registry)
    gauge = "outbox_wal_slot_retained_bytes"
    assert registry.get_sample_value(gauge, {"slot": slot}) is None  # no slot, no sample
    with logical_slot(slot):
        emit_wal()
        retained = registry.get_sample_value(gauge, {"slot": slot})
    assert retained is not None
    assert retained > 0
