"""Cost of the operational reads and of the purge on a large outbox table.

Fills the outbox of the database named by OUTBOX_DB_NAME with published rows (plus a small
backlog), then times what operators run often: the admin summary / ``outbox_status``
(``stats.summary``), the scrape-time gauges (``stats.backlog``), and the purge of half the
table, and the admin's outbox list (unfiltered, stuck filter, one ordering key; with and
without its blocked-by marks). The baseline is an exact ``count(*)`` of the table, measured
in the same run.

    OUTBOX_DB_NAME=outbox_bench python bench/operations_bench.py [--quick]

Deletes every outbox row of that database before and after: never point it at real data.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

import django

django.setup()

from django.db import connection  # noqa: E402

from outbox.operations import actions, stats  # noqa: E402

FILL_SQL = """
INSERT INTO outbox_message (message_id, event_type, routing_key, exchange, aggregate_type,
    aggregate_id, ordering_key, payload, headers, status, attempts, next_attempt_at,
    last_error, created_at, published_at, lease_owner)
SELECT gen_random_uuid(), 'orders.order_placed', 'orders.order_placed', 'events', 'order',
    n::text, 'order:' || n, jsonb_build_object('order_id', n), '{}'::jsonb,
    %(status)s, 1, now(), '', now() - make_interval(secs => %(span)s * (1 - n::float / %(rows)s)),
    CASE WHEN %(status)s = 'published'
         THEN now() - make_interval(secs => %(span)s * (1 - n::float / %(rows)s)) END, ''
FROM generate_series(%(first)s, %(last)s) AS n
"""
# Rows per INSERT: the position trigger takes one advisory lock per ordering key until the
# transaction ends, and a million keys in one statement exhaust PostgreSQL's lock table.
FILL_CHUNK = 5000


def timed(function: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``repeat`` calls, in milliseconds."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def fill(status: str, span: float, rows: int) -> None:
    with connection.cursor() as cursor:
        for first in range(1, rows + 1, FILL_CHUNK):
            last = min(rows, first + FILL_CHUNK - 1)
            cursor.execute(
                FILL_SQL,
                {"status": status, "span": span, "rows": rows, "first": first, "last": last},
            )


def exact_count() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM outbox_message")


def admin_list(baseline: float) -> None:
    """The outbox admin list through the test client, with the blocked-by marks (the admin
    as shipped) and without them (the plain queryset), in the same run."""
    from django.contrib.auth.models import User
    from django.test import Client
    from django.test.utils import override_settings

    from outbox.admin import OutboxMessageAdmin

    User.objects.filter(username="outbox-bench").delete()
    client = Client()
    client.force_login(User.objects.create_superuser("outbox-bench", password="x"))
    shipped = OutboxMessageAdmin.get_queryset

    def plain(self: OutboxMessageAdmin, request: Any) -> Any:
        return super(OutboxMessageAdmin, self).get_queryset(request)

    def page(query: dict[str, str]) -> Callable[[], object]:
        return lambda: client.get("/admin/outbox/outboxmessage/", query)

    with override_settings(ALLOWED_HOSTS=["testserver"]):
        for label, query in [
            ("unfiltered", {}),
            ("stuck filter", {"stuck": "yes"}),
            ("one ordering key", {"ordering_key": "order:7"}),
        ]:
            OutboxMessageAdmin.get_queryset = plain  # type: ignore[method-assign]
            without = timed(page(query), 5)
            OutboxMessageAdmin.get_queryset = shipped  # type: ignore[method-assign]
            marked = timed(page(query), 5)
            print(
                f"admin list, {label + ':':17} {marked:8.1f} ms  ({marked / baseline:.2f}x;"
                f" without blocked-by marks {without:.1f} ms, {marked / without:.2f}x)"
            )
    User.objects.filter(username="outbox-bench").delete()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100k rows instead of 1M")
    args = parser.parse_args()
    rows = 100_000 if args.quick else 1_000_000
    span = timedelta(days=14).total_seconds()

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE outbox_message")
    fill("published", span, rows)
    fill("ready", 60, 1000)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE outbox_message")
    print(f"table: {rows:,} published rows over 14 days + 1,000 ready")

    baseline = timed(exact_count, 5)
    summary_ms = timed(stats.summary, 5)
    backlog_ms = timed(stats.backlog, 5)
    print(f"baseline exact count(*):          {baseline:8.1f} ms")
    print(f"stats.summary (admin, status):    {summary_ms:8.1f} ms  ({summary_ms / baseline:.2f}x)")
    print(f"stats.backlog (per scrape):       {backlog_ms:8.1f} ms  ({backlog_ms / baseline:.2f}x)")

    admin_list(baseline)

    start = time.perf_counter()
    deleted = actions.purge_published(older_than=timedelta(days=7), batch_size=1000)
    seconds = time.perf_counter() - start
    print(
        f"purge (batches of 1,000):         {deleted:,} rows in {seconds:.1f} s"
        f" = {deleted / seconds:,.0f} rows/s"
    )

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE outbox_message")


if __name__ == "__main__":
    main()
