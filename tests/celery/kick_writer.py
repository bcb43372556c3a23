"""A writer process for tests/celery/test_kick_worker.py: commits ``COMMITS`` transactions of one
``publish()`` each from ``THREADS`` threads, as fast as they go, with the kick on commit.

Run with the settings of a relay subprocess (tests/relay/settings.py, OUTBOX_TEST_OVERRIDES).
It prints one JSON line when the commits are done ({"committed", "elapsed"}), then for each
line on stdin how many kicks it has sent and how many sends failed ({"sent", "failures"});
it exits when stdin closes.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.relay.settings")
django.setup()

from django.db import connection, transaction  # noqa: E402  # after django.setup()

from outbox import kick, publish  # noqa: E402


def main(commits: int, threads: int) -> None:
    def write(worker: int) -> None:
        try:
            for n in range(worker, commits, threads):
                with transaction.atomic():
                    publish("orders.placed", {"n": n}, aggregate_type="order", aggregate_id=n)
        finally:
            connection.close()

    started = time.monotonic()
    writers = [threading.Thread(target=write, args=(k,)) for k in range(threads)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    elapsed = time.monotonic() - started
    print(json.dumps({"committed": commits, "elapsed": elapsed}), flush=True)
    for _ in sys.stdin:
        kicker = kick.kicker()
        print(json.dumps({"sent": kicker.sent, "failures": kicker.failures}), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
