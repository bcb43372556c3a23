"""What the two-level order locks of the insert trigger cost a writer, against the previous
one-lock-per-key trigger, measured in the same run on the same database.

    OUTBOX_DB_NAME=outbox_bench .venv/bin/python bench/order_locks.py [--quick]

For each trigger, in alternating rounds so both see the same background load: the write
overhead of publish() (median time of a transaction inserting one order plus one publish(),
over the same transaction without publish(); bench/relay.py's ``write_overhead``) and the
time of one publish_many() of 5,000 aggregates. The previous trigger is swapped in for its
rounds and the migrated one restored at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import time

from django.core.management import call_command
from django.db import connection, transaction
from environment import REPO_ROOT  # first: puts Django in place
from relay import write_overhead

from outbox import Message, publish_many
from outbox.models import OutboxMessage

# The trigger function before the two-level scheme: one exclusive lock per ordering key.
ONE_LOCK_PER_KEY = """
CREATE OR REPLACE FUNCTION outbox_message_assign_position() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.ordering_key <> '' THEN
        PERFORM pg_advisory_xact_lock(1330992216, hashtext(NEW.ordering_key));
    END IF;
    NEW.position := nextval('outbox_message_position_seq');
    RETURN NEW;
END
$$;
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    options = parser.parse_args()
    logging.getLogger("outbox").setLevel(logging.WARNING)
    transactions = 200 if options.quick else 1_000
    rounds = 2 if options.quick else 3

    subprocess.run([sys.executable, "scripts/create_database.py"], cwd=REPO_ROOT, check=True)
    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_get_functiondef('outbox_message_assign_position'::regproc)")
        (two_levels,) = cursor.fetchone()
    triggers = {"one lock per key": ONE_LOCK_PER_KEY, "two levels": two_levels}
    overhead: dict[str, list[float]] = {name: [] for name in triggers}
    batch: dict[str, list[float]] = {name: [] for name in triggers}
    try:
        for _ in range(rounds):
            for name, definition in triggers.items():
                with connection.cursor() as cursor:
                    cursor.execute(definition)
                overhead[name].append(write_overhead(transactions))
                batch[name].append(publish_many_seconds(5_000))
                OutboxMessage.objects.all().delete()
    finally:
        with connection.cursor() as cursor:
            cursor.execute(two_levels)
    for name in triggers:
        print(
            f"{name:18} publish() overhead {statistics.median(overhead[name]):.3f}x a plain"
            f" transaction; publish_many(5,000 aggregates) {statistics.median(batch[name]):.3f} s"
        )
    ratio = statistics.median(overhead["two levels"]) / statistics.median(
        overhead["one lock per key"]
    )
    print(f"two levels / one lock per key, publish() overhead: {ratio:.3f}")


def publish_many_seconds(aggregates: int) -> float:
    started = time.perf_counter()
    with transaction.atomic():
        publish_many(
            Message("orders.changed", {"n": n}, aggregate_type="order", aggregate_id=n)
            for n in range(aggregates)
        )
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
