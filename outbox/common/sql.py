"""Named SQL queries, and rows read by column name into their dataclasses.

SQL that is not natural in the ORM lives in ``.sql`` files next to the code that runs it, one
query per block that starts with a ``-- name: <name>`` line. Rows come back as instances of the
dataclass the caller names, matched by column name, so a reordered SELECT cannot silently
shift values into the wrong field.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any, Protocol, TypeVar

__all__ = ["QueryCursor", "load_queries", "rows_as"]

_NAME_LINE = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)

RowT = TypeVar("RowT")


@cache
def load_queries(package: str, resource: str) -> dict[str, str]:
    """The named queries of ``resource`` (a path inside ``package``), by name.

    Each body is stripped of surrounding blank space, of its final semicolon, of its
    comment-only lines but the first (which names the statement in ``pg_stat_activity`` and
    the server's logs) and of each line's indentation; no query has a string literal over
    several lines. Comments and indentation are for the files' readers. Sent with every call
    they made the relay's claim longer than psycopg caches the parsing of (4,096
    characters), and psycopg parsed its 7,000 characters again for every claim.
    """
    text = resources.files(package).joinpath(resource).read_text(encoding="utf-8")
    parts = _NAME_LINE.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    names, bodies = parts[1::2], parts[2::2]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ValueError(f"{package}/{resource} names more than one query {duplicated}")
    return {name: _without_comments(body) for name, body in zip(names, bodies, strict=True)}


def _without_comments(body: str) -> str:
    first, *rest = body.strip().removesuffix(";").rstrip().splitlines()
    kept = [line.strip() for line in rest]
    return "\n".join([first, *(line for line in kept if line and not line.startswith("--"))])


class QueryCursor(Protocol):
    """The part of a DB-API cursor that ``rows_as`` reads (Django's cursor has it)."""

    @property
    def description(self) -> Sequence[Any] | None: ...

    def fetchall(self) -> Sequence[Sequence[Any]]: ...


def rows_as(cursor: QueryCursor, row_type: type[RowT]) -> list[RowT]:
    """Every remaining row of ``cursor`` as a ``row_type`` dataclass, fields set by column name.

    The query must return exactly the dataclass's fields (in any order); anything else is a
    programming error and raises ``TypeError`` naming the difference.
    """
    if cursor.description is None:
        raise TypeError("the query returned no rows to read (no RETURNING or SELECT list)")
    columns = [column[0] for column in cursor.description]
    if not dataclasses.is_dataclass(row_type):
        raise TypeError(f"{row_type!r} is not a dataclass")
    fields = {field.name for field in dataclasses.fields(row_type)}
    if set(columns) != fields:
        raise TypeError(
            f"columns {sorted(set(columns) - fields)} are not fields of {row_type.__name__},"
            f" fields {sorted(fields - set(columns))} have no column"
        )
    return [row_type(**dict(zip(columns, row, strict=True))) for row in cursor.fetchall()]
