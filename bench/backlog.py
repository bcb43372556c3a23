"""Claim benchmark over skewed backlogs: claim time and drain rate per backlog shape.

    OUTBOX_DB_NAME=outbox_bench .venv/bin/python bench/backlog.py [--quick] [--rabbitmq]

Each shape starts from an empty outbox table, is filled with INSERT ... SELECT over
generate_series (tests/relay/backlog.py; the trigger still assigns every position), then
VACUUM ANALYZE (this machine runs PostgreSQL with autovacuum off: without it the planner has
no statistics for the fresh rows). The claim is measured with EXPLAIN ANALYZE (server time,
rolled back) before the drain, and by the client around every claim the drain makes. The
drain is the real ``Relay`` with the default settings (BATCH_SIZE 500, MAX_PER_KEY up to the
batch) and the in-memory publisher: no broker, so the figures are the database side of the
relay, which is what the backlog's shape changes. ``--rabbitmq`` drains into RabbitMQ instead
(a private exchange and queue, purged after each shape and deleted at the end); the broker
then sets the pace. Every rate is compared with a
baseline drained in the same run, since the machine is shared and absolute figures drift.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pika
from django.core.management import call_command
from django.db import connection, transaction
from environment import EXCHANGE, REPO_ROOT  # first: puts Django in place
from pika.exchange_type import ExchangeType

from outbox.broker import connection_parameters
from outbox.relay import Relay, RelaySettings
from outbox.relay.postgresql import PostgreSQLStore, queries
from outbox.relay.publishers import (
    InMemoryPublisher,
    OutgoingMessage,
    Publisher,
    PublishOutcome,
    RabbitMQPublisher,
)
from outbox.relay.store import ClaimedMessage
from tests.relay import backlog
from tests.relay.backlog import vacuum_analyze

CLAIM_TARGET_MS = 20.0
# Rows go to the private exchange of bench/environment.py, whichever publisher drains them.
fill = functools.partial(backlog.fill, exchange=EXCHANGE)


@dataclass(frozen=True)
class Sizes:
    million: int
    failed_backlog: int
    others: int
    hot: int
    drain_seconds: float
    explain_runs: int


FULL = Sizes(1_000_000, 200_000, 10_000, 50_000, 15.0, 5)
QUICK = Sizes(20_000, 5_000, 2_000, 5_000, 2.0, 3)


class CountingPublisher(InMemoryPublisher):
    """The in-memory publisher, counting instead of keeping a million messages."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def publish_batch(
        self,
        messages: Sequence[OutgoingMessage],
        *,
        confirm_timeout: float,
        after_send: Callable[[], None] | None = None,
    ) -> PublishOutcome:
        outcome = super().publish_batch(
            messages, confirm_timeout=confirm_timeout, after_send=after_send
        )
        self.count += len(self.published)
        self.published.clear()
        return outcome


class TimedStore(PostgreSQLStore):
    """The PostgreSQL store, timing each claim as the relay sees it (round trip included)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.claim_ms: list[float] = []

    def claim(self, *, owner: str, limit: int, lease_seconds: float) -> list[ClaimedMessage]:
        started = time.perf_counter()
        claimed = super().claim(owner=owner, limit=limit, lease_seconds=lease_seconds)
        self.claim_ms.append((time.perf_counter() - started) * 1000)
        return claimed


@dataclass
class Drain:
    published: int
    seconds: float
    claim_ms: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.published / self.seconds

    def claims(self) -> str:
        if not self.claim_ms:
            return "no claims"
        ordered = sorted(self.claim_ms)
        p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
        return f"claims in the drain p50 {statistics.median(ordered):5.1f} ms, p95 {p95:5.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--rabbitmq", action="store_true", help="publish to RabbitMQ")
    options = parser.parse_args()
    sizes = QUICK if options.quick else FULL
    logging.getLogger("outbox").setLevel(logging.WARNING)
    subprocess.run([sys.executable, "scripts/create_database.py"], cwd=REPO_ROOT, check=True)
    call_command("migrate", verbosity=0)
    settings = RelaySettings.from_settings()
    print(
        f"database {connection.settings_dict['NAME']}; batch {settings.batch_size};"
        f" {'RabbitMQ' if options.rabbitmq else 'in-memory publisher'};"
        " VACUUM ANALYZE after each fill (autovacuum is off here)"
    )
    global BROKER
    BROKER = Broker() if options.rabbitmq else None
    try:
        failures = run(sizes, settings)
    finally:
        if BROKER is not None:
            try:
                BROKER.delete()
            except pika.exceptions.AMQPError:
                # The shared broker may be down (a test suite stopping it): say what is left.
                print(f"could not delete queue {BROKER.queue} and exchange {EXCHANGE}")
    print()
    print("all targets met" if not failures else "targets missed: " + "; ".join(failures))
    if failures:
        sys.exit(1)


def run(sizes: Sizes, settings: RelaySettings) -> list[str]:
    failures: list[str] = []

    def check(name: str, ok: bool) -> None:
        if not ok:
            failures.append(name)

    # Warm-up (connections, caches, plans), not reported.
    shape(lambda: fill(sizes.others, sizes.others))
    drain(settings)
    # Baseline: the spread case, one row for each of `others` aggregates, drained alone.
    spread = shape(lambda: fill(sizes.others, sizes.others))
    spread_drain = drain(settings)
    report(f"spread: {sizes.others:,} rows / {sizes.others:,} aggregates", spread, spread_drain)

    for rows, aggregates in ((sizes.million, 10_000), (sizes.million, 10)):
        explain_ms = shape(functools.partial(fill, rows, aggregates), runs=sizes.explain_runs)
        result = drain(settings, time_budget=sizes.drain_seconds)
        ratio = result.rate / spread_drain.rate
        report(f"{rows:,} rows / {aggregates:,} aggregates", explain_ms, result, ratio)
        check(f"claim {rows}/{aggregates}", statistics.median(explain_ms) <= CLAIM_TARGET_MS)
        check(f"rate {rows}/{aggregates}", ratio >= 0.8)

    def failed_head() -> None:
        fill(sizes.failed_backlog, 1, aggregate_type="poison")
        fill(sizes.others, sizes.others)
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE outbox_message SET status = 'failed' WHERE id = ("
                " SELECT id FROM outbox_message WHERE aggregate_type = 'poison'"
                " ORDER BY position LIMIT 1)"
            )

    explain_ms = shape(failed_head, runs=sizes.explain_runs)
    result = drain(settings)  # ends when only the blocked key is left
    ratio = result.rate / spread_drain.rate
    report(
        f"1 failed head, {sizes.failed_backlog:,} behind + {sizes.others:,} others",
        explain_ms,
        result,
        ratio,
    )
    check("failed head: others all published", result.published == sizes.others)
    check("claim failed head", statistics.median(explain_ms) <= CLAIM_TARGET_MS)
    check("rate failed head", ratio >= 0.8)

    spread_keys = min(10_000, sizes.hot // 5)
    shape(lambda: fill(sizes.hot, spread_keys))
    many = drain(settings)
    report(f"hot baseline: {sizes.hot:,} rows / {spread_keys:,} aggregates", [], many)
    explain_ms = shape(lambda: fill(sizes.hot, 1), runs=sizes.explain_runs)
    hot = drain(settings)
    ratio = hot.rate / many.rate
    report(f"hot: {sizes.hot:,} rows / 1 aggregate", explain_ms, hot, ratio, "of hot baseline")
    check("hot aggregate all published", hot.published == sizes.hot)
    check("hot aggregate rate", ratio >= 0.5)
    return failures


def shape(write: Callable[[], None], runs: int = 0) -> list[float]:
    """Empty the outbox, write a backlog, VACUUM ANALYZE it; then ``runs`` EXPLAIN ANALYZE
    timings of the claim (ms, each rolled back)."""
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE outbox_message")
    write()
    vacuum_analyze()
    return [explain_claim_ms() for _ in range(runs)]


def explain_claim_ms() -> float:
    params: dict[str, Any] = {
        "owner": "bench",
        "limit": 500,
        "lease_seconds": 30,
        "after": "",
        "max_per_key": 500,
    }
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + queries()["claim"], params)
        [[document]] = cursor.fetchall()
        transaction.set_rollback(True)
    plan = document if isinstance(document, list) else json.loads(document)
    return float(plan[0]["Execution Time"])


def drain(settings: RelaySettings, time_budget: float | None = None) -> Drain:
    publisher: Publisher = CountingPublisher() if BROKER is None else RabbitMQPublisher()
    store = TimedStore(connection.alias, retry=settings.retry_policy())
    relay = Relay(publisher, store, settings=settings, name="bench")
    try:
        started = time.perf_counter()
        result = relay.drain(time_budget=time_budget)
        elapsed = time.perf_counter() - started
    finally:
        relay.close()
    assert result.broker_error is None, result
    if BROKER is not None:
        BROKER.purge()
    return Drain(result.published, elapsed, store.claim_ms)


class Broker:
    """The private exchange of bench/environment.py with one queue bound to everything."""

    def __init__(self) -> None:
        self.queue = f"{EXCHANGE}-queue"
        self._on_channel(
            lambda channel: (
                channel.exchange_declare(EXCHANGE, exchange_type=ExchangeType.topic, durable=True),
                channel.queue_declare(self.queue, durable=True),
                channel.queue_bind(self.queue, EXCHANGE, routing_key="#"),
            )
        )

    def purge(self) -> None:
        self._on_channel(lambda channel: channel.queue_purge(self.queue))

    def delete(self) -> None:
        self._on_channel(
            lambda channel: (channel.queue_delete(self.queue), channel.exchange_delete(EXCHANGE))
        )

    @staticmethod
    def _on_channel(work: Callable[[Any], object]) -> None:
        broker = pika.BlockingConnection(connection_parameters(client_name="outbox-bench"))
        try:
            work(broker.channel())
        finally:
            broker.close()


BROKER: Broker | None = None


def report(
    name: str,
    explain_ms: list[float],
    result: Drain,
    ratio: float | None = None,
    against: str = "of spread",
) -> None:
    claim = f"claim {statistics.median(explain_ms):6.1f} ms" if explain_ms else " " * 14
    versus = f" ({ratio:4.0%} {against})" if ratio is not None else ""
    print(
        f"{name:<52} {claim}  drain {result.rate:7.0f} msg/s{versus};"
        f" {result.published:,} in {result.seconds:.1f} s; {result.claims()}"
    )


if __name__ == "__main__":
    main()
