"""Large outbox backlogs written in a few statements, for the claim tests and
bench/backlog.py (which imports this module; it needs no pytest).

Rows go in with INSERT ... SELECT over generate_series, so a million rows take seconds rather
than the minutes of ``publish_many``; the BEFORE INSERT trigger still assigns every position,
under the ordering key's lock, exactly as for rows written by ``publish()``.
"""

from __future__ import annotations

from django.db import connection

__all__ = ["KEYS_PER_STATEMENT", "fill", "vacuum_analyze"]

# The trigger takes one advisory lock per distinct key and holds it to the end of the
# statement's transaction; PostgreSQL's shared lock table holds a few thousand at the default
# max_locks_per_transaction, shared by every session of the server, so a statement writes
# at most this many keys.
KEYS_PER_STATEMENT = 500

_INSERT = """
INSERT INTO outbox_message (
    message_id, event_type, routing_key, exchange, aggregate_type, aggregate_id,
    ordering_key, payload, headers, status, attempts, next_attempt_at, last_error,
    created_at, published_at, lease_owner, lease_expires_at
)
SELECT gen_random_uuid(), %(event_type)s, %(event_type)s, %(exchange)s,
    %(aggregate_type)s, aggregate.id,
    CASE WHEN %(aggregate_type)s = '' THEN '' ELSE %(aggregate_type)s || ':' || aggregate.id END,
    jsonb_build_object('n', n), '{}'::jsonb, 'ready', 0, now(), '', now(), NULL, '', NULL
FROM generate_series(0, %(count)s - 1) AS n
CROSS JOIN LATERAL (SELECT (%(first)s + n %% %(keys)s)::text AS id) AS aggregate
"""


def fill(
    rows: int,
    aggregates: int,
    *,
    aggregate_type: str = "order",
    event_type: str = "orders.placed",
    exchange: str = "events",
) -> None:
    """Append ``rows`` ready rows spread evenly over ``aggregates`` aggregates (ids 0 to
    ``aggregates - 1``, rows of different aggregates interleaved). An empty
    ``aggregate_type`` writes rows without an ordering key."""
    per_key, extra = divmod(rows, aggregates)
    if extra:
        raise ValueError(f"{rows} rows do not spread evenly over {aggregates} aggregates")
    with connection.cursor() as cursor:
        for first in range(0, aggregates, KEYS_PER_STATEMENT):
            keys = min(KEYS_PER_STATEMENT, aggregates - first)
            cursor.execute(
                _INSERT,
                {
                    "count": keys * per_key,
                    "first": first,
                    "keys": keys,
                    "aggregate_type": aggregate_type,
                    "event_type": event_type,
                    "exchange": exchange,
                },
            )


def vacuum_analyze() -> None:
    """VACUUM ANALYZE the outbox table: planner statistics and the visibility map after a bulk
    fill (needed wherever autovacuum is off, as on the benchmark machine). Autocommit only."""
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE outbox_message")
