"""Per-aggregate order: messages of one ordering key reach the broker in commit order, with
overlapping writers and several relays at once."""

from __future__ import annotations

import functools
import random
import signal
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection, transaction
from django.db.models import F

from outbox import Message, publish, publish_many
from outbox.models import OutboxMessage
from outbox.relay import Relay
from outbox.relay.publishers import RabbitMQPublisher
from tests.broker import BoundQueue
from tests.relay.conftest import consume, fast_settings, payloads, relay_command, relay_env
from tests.testapp.models import Counter

pytestmark = pytest.mark.django_db(transaction=True)


def in_thread(work: Callable[[], None]) -> threading.Thread:
    """Run ``work`` on its own database connection (closed at the end)."""

    def run() -> None:
        try:
            work()
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def drain_to(exchange: BoundQueue, count: int) -> list[Any]:
    relay = Relay(RabbitMQPublisher(), settings=fast_settings())
    try:
        relay.drain()
        relay.drain()
    finally:
        relay.close()
    return payloads(consume(exchange, count))


def test_a_second_writer_of_a_key_waits_for_the_first_to_commit(exchange: BoundQueue) -> None:
    """A writes first and commits last in wall-clock terms it cannot: B, which started
    later, waits at its insert until A commits, so B can never commit first."""
    b_committed = threading.Event()

    def writer_b() -> None:
        with transaction.atomic():
            publish("orders.changed", {"by": "B"}, aggregate_type="order", aggregate_id=1)
        b_committed.set()

    with transaction.atomic():
        publish("orders.changed", {"by": "A"}, aggregate_type="order", aggregate_id=1)
        thread = in_thread(writer_b)
        assert not b_committed.wait(0.7), "B committed while A, which wrote the key first, was open"
        # Meanwhile a relay (on its own connection) finds nothing to publish for the key.
        published: list[int] = []

        def relay_once() -> None:
            relay = Relay(RabbitMQPublisher(), settings=fast_settings())
            try:
                published.append(relay.drain().published)
            finally:
                relay.close()

        in_thread(relay_once).join(10)
        assert published == [0]
    thread.join(10)
    assert b_committed.is_set()
    assert drain_to(exchange, 2) == [{"by": "A"}, {"by": "B"}]


def test_the_transaction_that_commits_first_is_published_first(exchange: BoundQueue) -> None:
    """A starts first but writes its outbox row late; B starts later and commits first."""
    with transaction.atomic():
        publish("orders.changed", {"by": "setup"}, aggregate_type="order", aggregate_id=9)
        Counter.objects.create(name="a-started")

        def writer_b() -> None:
            with transaction.atomic():
                publish("orders.changed", {"by": "B"}, aggregate_type="order", aggregate_id=1)

        in_thread(writer_b).join(10)
        # B is committed now; A's row comes after it, whatever the ids say.
        publish("orders.changed", {"by": "A"}, aggregate_type="order", aggregate_id=1)
    received = drain_to(exchange, 3)
    assert [p for p in received if p["by"] != "setup"] == [{"by": "B"}, {"by": "A"}]


def test_a_rolled_back_first_writer_lets_the_second_through(exchange: BoundQueue) -> None:
    b_done = threading.Event()

    def writer_b() -> None:
        with transaction.atomic():
            publish("orders.changed", {"by": "B"}, aggregate_type="order", aggregate_id=1)
        b_done.set()

    class Abort(Exception):
        pass

    threads: list[threading.Thread] = []

    def write_a_then_abort() -> None:
        with transaction.atomic():
            publish("orders.changed", {"by": "A"}, aggregate_type="order", aggregate_id=1)
            threads.append(in_thread(writer_b))
            time.sleep(0.3)
            raise Abort

    with pytest.raises(Abort):
        write_a_then_abort()
    threads[0].join(10)
    assert b_done.is_set()
    assert drain_to(exchange, 1) == [{"by": "B"}]


AGGREGATES = 200
ROWS = 20_000
WRITERS = 4
KEYS_PER_TRANSACTION = 25  # two rows per key per transaction


@pytest.mark.slow
def test_three_relays_keep_commit_order_per_aggregate_over_20000_rows(
    exchange: BoundQueue, processes: list[subprocess.Popen[bytes]]
) -> None:
    names = [f"agg-{n:03d}" for n in range(AGGREGATES)]
    Counter.objects.bulk_create(Counter(name=name) for name in names)
    relays = [
        subprocess.Popen(
            relay_command(),
            env=relay_env(EXCHANGE=exchange.exchange, POLL_INTERVAL_SECONDS=0.2),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    processes.extend(relays)
    transactions = ROWS // (2 * KEYS_PER_TRANSACTION)
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        # Commit order per aggregate is fixed by the business row lock: each transaction
        # locks its aggregates' counters, and the payload carries the counter's new values.
        # The outbox must deliver every aggregate's messages in that sequence.
        chooser = random.Random(seed)
        try:
            for _ in range(transactions // WRITERS):
                keys = sorted(chooser.sample(names, KEYS_PER_TRANSACTION))
                with transaction.atomic():
                    counters = list(
                        Counter.objects.select_for_update().filter(name__in=keys).order_by("name")
                    )
                    Counter.objects.filter(name__in=keys).update(value=F("value") + 2)
                    publish_many(
                        Message(
                            "orders.changed",
                            {"aggregate": c.name, "seq": c.value + step},
                            aggregate_type="counter",
                            aggregate_id=c.name,
                        )
                        for c in counters
                        for step in (1, 2)
                    )
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    writers = [in_thread(functools.partial(writer, seed)) for seed in range(WRITERS)]
    for thread in writers:
        thread.join(120)
    assert errors == []
    received = consume(exchange, ROWS, timeout=120)
    assert len(received) == ROWS, f"{len(received)} of {ROWS} arrived"
    message_ids = [m.properties.message_id for m in received]
    assert len(set(message_ids)) == ROWS, "a message was published twice"
    by_aggregate: dict[str, list[int]] = defaultdict(list)
    for payload in payloads(received):
        by_aggregate[payload["aggregate"]].append(payload["seq"])
    final = dict(Counter.objects.values_list("name", "value"))
    for name, sequence in by_aggregate.items():
        assert sequence == list(range(1, final[name] + 1)), f"{name} out of order"
    assert OutboxMessage.objects.exclude(status="published").count() == 0
    for relay in relays:
        relay.send_signal(signal.SIGTERM)
    for relay in relays:
        _, err = relay.communicate(timeout=30)
        assert relay.returncode == 0, err.decode()[-2000:]
