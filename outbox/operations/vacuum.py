"""VACUUM after a purge, so the space of the deleted rows is reused by new ones.

A DELETE leaves dead row versions; only VACUUM (or autovacuum) makes their space reusable.
A server with autovacuum off, or behind on a busy table, would otherwise let the outbox and
the inbox grow by a purge's worth of dead rows every run, forever (docs/operations.md,
"Vacuum"). ``VACUUM`` cannot run inside a transaction block, so a purge called inside
``transaction.atomic`` (a test, a caller's own transaction) skips it; autovacuum or the next
purge catches up.
"""

from __future__ import annotations

import logging

from django.db import DatabaseError, connections
from django.db.models import Model

from outbox import conf

__all__ = ["vacuum_after_purge"]

logger = logging.getLogger("outbox.operations")


def vacuum_after_purge(model: type[Model], alias: str, deleted: int) -> bool:
    """Run ``VACUUM (ANALYZE)`` on ``model``'s table after a purge that deleted rows, on
    PostgreSQL, outside a transaction, unless ``OUTBOX["PURGE_VACUUM"]`` is off. Returns
    whether it ran. A failure (for instance a database user that does not own the table) is
    logged, never raised: the purge itself has succeeded."""
    connection = connections[alias]
    if (
        deleted <= 0
        or connection.vendor != "postgresql"
        or connection.in_atomic_block
        or not conf.get_bool("PURGE_VACUUM")
    ):
        return False
    table = connection.ops.quote_name(model._meta.db_table)
    try:
        with connection.cursor() as cursor:
            # ANALYZE too: the purge changed the table's row counts, which the claim's plan uses.
            cursor.execute(f"VACUUM (ANALYZE) {table}")
    except DatabaseError as error:
        logger.warning("VACUUM of %s after the purge failed: %s", table, error)
        return False
    return True
