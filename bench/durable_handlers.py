"""Durable after-commit handlers: what one costs the business transaction, and how fast one
runner works through a backlog of jobs, against the PostgreSQL database of the example
settings.

Usage: OUTBOX_DB_NAME=... .venv/bin/python bench/durable_handlers.py [--quick]

The database is created and migrated if needed. Write overhead: interleaved transactions that
insert one order row and dispatch one event, with no handler (the baseline), with one durable
no-op handler (one job row), and with one in-transaction handler calling ``outbox.publish()``
(one outbox row, for comparison); medians and ratios to the baseline of the same run. Runner:
``run_due_jobs()`` over a backlog of no-op jobs, in jobs/s. Only ``bench.*`` jobs, outbox rows
and ``bench.noted`` orders are written, and removed before and after.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.core.management import call_command
from django.db import transaction
from environment import REPO_ROOT as ROOT  # first: puts Django in place

from domain_events import DomainEvent, dispatch, handler
from domain_events.registry import registry
from example_project.shop.models import Order
from outbox import kick, publish
from outbox.jobs import run_due_jobs
from outbox.models import InboxMessage, OutboxJob, OutboxMessage

NAME_PREFIX = "__main__."


@dataclass(frozen=True)
class Noted(DomainEvent, event_type="bench.Noted"):
    n: int


def durable_noop(event: Noted) -> None:
    """The durable handler: does nothing, so the figures are the framework's."""


def announce(event: Noted) -> None:
    publish("bench.noted", {"n": event.n})


def clean() -> None:
    OutboxJob.objects.filter(name__startswith=NAME_PREFIX).delete()
    InboxMessage.objects.filter(consumer__contains=f":{NAME_PREFIX}").delete()
    OutboxMessage.objects.filter(event_type="bench.noted").delete()
    Order.objects.filter(sku="bench.noted").delete()


def one_transaction(n: int) -> float:
    started = time.perf_counter()
    with transaction.atomic():
        Order.objects.create(sku="bench.noted", quantity=1)
        dispatch([Noted(n=n)])
    return (time.perf_counter() - started) * 1000


def with_handlers(register: Callable[[], object], n: int) -> float:
    with registry.isolated():
        register()
        return one_transaction(n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer transactions and jobs")
    options = parser.parse_args()
    pairs, backlog = (200, 500) if options.quick else (2000, 5000)

    subprocess.run([sys.executable, str(ROOT / "scripts/create_database.py")], check=True)
    call_command("migrate", verbosity=0)
    kick._celery_ready = False  # no Celery worker of this benchmark: no kicks
    clean()
    try:
        arms: dict[str, list[float]] = {"no handler": [], "durable": [], "publish": []}
        for n in range(pairs):
            arms["no handler"].append(with_handlers(lambda: None, n))
            arms["durable"].append(
                with_handlers(lambda: handler(Noted, on_commit="durable")(durable_noop), n)
            )
            arms["publish"].append(with_handlers(lambda: handler(Noted)(announce), n))
        base = statistics.median(arms["no handler"])
        print(f"one order and one event, no handler: p50 {base:.3f} ms ({pairs} transactions each)")
        for arm, label in (("durable", "one durable handler"), ("publish", "one publish()")):
            p50 = statistics.median(arms[arm])
            print(f"  with {label}: p50 {p50:.3f} ms, {p50 / base:.2f}x")
        clean()

        handler(Noted, on_commit="durable")(durable_noop)
        with transaction.atomic():
            dispatch([Noted(n=n) for n in range(backlog)])
        started = time.perf_counter()
        result = run_due_jobs()
        elapsed = time.perf_counter() - started
        assert result.done == backlog, result
        print(
            f"runner: {backlog} no-op jobs in {elapsed:.2f} s, {backlog / elapsed:.0f} jobs/s"
            " (one runner, one transaction per job)"
        )
    finally:
        clean()


if __name__ == "__main__":
    main()
