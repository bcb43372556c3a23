"""The outage helper itself: the database refuses connections inside the block, and only
there."""

from __future__ import annotations

import psycopg
import pytest
from django.db import connection

from tests.outages import database_down


@pytest.mark.django_db(transaction=True)
def test_the_database_refuses_connections_inside_the_block_and_accepts_them_after() -> None:
    name = str(connection.settings_dict["NAME"])
    dsn = f"host=127.0.0.1 port=5432 user=postgres dbname={name}"
    with (
        database_down(name),
        pytest.raises(psycopg.OperationalError, match="not currently accepting"),
    ):
        psycopg.connect(dsn).close()
    with psycopg.connect(dsn) as reopened:
        assert reopened.execute("SELECT 1").fetchone() == (1,)
