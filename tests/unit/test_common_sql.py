"""The one named-SQL loader and reading rows by column name."""

from dataclasses import dataclass

import pytest
from django.db import connection

from outbox.common.sql import load_queries, rows_as


@dataclass(frozen=True)
class _Pair:
    left: int
    right: str


def test_both_packages_load_their_queries_through_the_one_loader() -> None:
    outbox_queries = load_queries("outbox", "sql/queries.sql")
    event_store_queries = load_queries("domain_events", "sql/event_store.sql")
    assert "claim" in outbox_queries
    assert "read_all" in event_store_queries
    # Bodies are trimmed the same way: no trailing semicolon, no surrounding blank space.
    for body in [*outbox_queries.values(), *event_store_queries.values()]:
        assert body == body.strip()
        assert not body.endswith(";")


@pytest.mark.django_db
def test_rows_are_read_by_column_name_whatever_the_column_order() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 'b' AS right, 1 AS left UNION ALL SELECT 'c', 2 ORDER BY 2")
        assert rows_as(cursor, _Pair) == [_Pair(1, "b"), _Pair(2, "c")]


@pytest.mark.django_db
def test_a_query_whose_columns_differ_from_the_fields_is_refused_by_name() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 AS left, 'x' AS wrong")
        with pytest.raises(TypeError, match=r"\['wrong'\].*\['right'\]"):
            rows_as(cursor, _Pair)
