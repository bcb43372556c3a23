"""The one named-SQL loader and reading rows by column name."""

from dataclasses import dataclass

import pytest
from django.db import connection
from psycopg._queries import MAX_CACHED_STATEMENT_LENGTH

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


def test_queries_go_without_comments_and_short_enough_for_psycopgs_parse_cache() -> None:
    """psycopg parses a statement longer than its cache limit again at every call (the
    relay's claim, 7,000 characters with its comments, cost about 12% of the relay's CPU at
    200 messages/s). Only the first line, which names the statement, keeps its comment."""
    files = [
        ("outbox", "sql/queries.sql"),
        ("outbox", "sql/wal.sql"),
        ("outbox", "sql/wal_operations.sql"),
        ("domain_events", "sql/event_store.sql"),
    ]
    for package, resource in files:
        for name, body in load_queries(package, resource).items():
            assert len(body) <= MAX_CACHED_STATEMENT_LENGTH, (resource, name, len(body))
            later_lines = body.splitlines()[1:]
            assert not [line for line in later_lines if line.startswith("--")], name
            assert later_lines == [line.strip() for line in later_lines], name
    assert load_queries("outbox", "sql/queries.sql")["claim"].startswith("-- Lease up to")


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
