"""The insert trigger's two-level order locks: a transaction may publish for any number of
aggregates (it holds at most 32 key locks and 256 bucket locks), and a second writer of a
key still waits for the first to commit, whichever of them is the big one."""

from __future__ import annotations

import functools
import json
import random
import threading
from collections import defaultdict
from collections.abc import Callable

import pytest
from django.db import connection, transaction
from django.db.models import F

from outbox import Message, publish, publish_many
from outbox.models import OutboxMessage
from outbox.relay.publishers import InMemoryPublisher
from outbox.writer import order_lock_bucket
from tests.relay.conftest import memory_relay
from tests.relay.test_ordering import in_thread
from tests.testapp.models import Counter

pytestmark = pytest.mark.django_db(transaction=True)

KEY_LOCKS = 32
BUCKETS = 256


def messages(aggregates: range | list[int], tag: str = "big") -> list[Message]:
    return [
        Message("orders.changed", {"by": tag, "n": n}, aggregate_type="order", aggregate_id=n)
        for n in aggregates
    ]


def advisory_locks_held() -> int:
    """Advisory locks this connection holds, as entries of the shared lock table (a bucket
    held both shared and exclusive is one entry, two rows of pg_locks)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(DISTINCT (classid, objid)) FROM pg_locks"
            " WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        (held,) = cursor.fetchone()
    return int(held)


def positions(tag: str, aggregate: int) -> list[int]:
    return list(
        OutboxMessage.objects.filter(payload__by=tag, aggregate_id=str(aggregate))
        .order_by("position")
        .values_list("position", flat=True)
    )


def test_the_python_bucket_is_the_triggers_bucket() -> None:
    keys = ["order:1", "order:2", "counter:agg-007", "ünïcode:ключ", "x" * 500]
    keys += [f"order:{n}" for n in random.Random(7).sample(range(10**9), 200)]
    with connection.cursor() as cursor:
        cursor.execute("SELECT k, outbox_order_lock_bucket(k) FROM unnest(%s::text[]) AS k", [keys])
        in_sql = dict(cursor.fetchall())
    assert {key: order_lock_bucket(key) for key in keys} == in_sql
    assert len(set(in_sql.values())) > 100  # spread over the buckets


def test_publish_many_over_20000_aggregates_in_one_transaction() -> None:
    with transaction.atomic():
        rows = publish_many(messages(range(20_000)))
        held = advisory_locks_held()
    assert held <= KEY_LOCKS + BUCKETS
    assert len(rows) == OutboxMessage.objects.count() == 20_000


@pytest.mark.slow
def test_publish_many_over_100000_aggregates_in_one_transaction() -> None:
    with transaction.atomic():
        publish_many(messages(range(100_000)))
        assert advisory_locks_held() <= KEY_LOCKS + BUCKETS
    assert OutboxMessage.objects.count() == 100_000


@pytest.mark.slow
def test_20000_separate_publish_calls_in_one_transaction() -> None:
    with transaction.atomic():
        for n in range(20_000):
            publish("orders.changed", {"n": n}, aggregate_type="order", aggregate_id=n)
        assert advisory_locks_held() <= KEY_LOCKS + BUCKETS
    assert OutboxMessage.objects.count() == 20_000


def test_a_small_transaction_keeps_one_lock_per_key() -> None:
    with transaction.atomic():
        publish_many(messages(range(5)))
        publish("orders.changed", {}, aggregate_type="order", aggregate_id=1)  # again: no new
        buckets = {order_lock_bucket(f"order:{n}") for n in range(5)}
        assert advisory_locks_held() == 5 + len(buckets)


def committed_while(open_transaction: Callable[[], object], writer: Callable[[], None]) -> bool:
    """Run ``writer`` in a thread while ``open_transaction`` runs here, inside a transaction
    kept open 0.7 s after its writes; return whether ``writer`` committed meanwhile."""
    done = threading.Event()

    def write_and_signal() -> None:
        writer()
        done.set()

    with transaction.atomic():
        open_transaction()
        thread = in_thread(write_and_signal)
        committed = done.wait(0.7)
    thread.join(20)
    assert done.is_set(), "the second writer never committed"
    return committed


def small_writer(aggregate: int) -> Callable[[], None]:
    def write() -> None:
        with transaction.atomic():
            publish_many(messages([aggregate], tag="small"))

    return write


def test_a_small_writer_of_a_key_waits_for_a_big_transaction_that_wrote_it() -> None:
    big = range(2_000)
    # Aggregate 1999 comes late in the big batch, long after it moved to bucket locks.
    late = max(big, key=lambda n: (order_lock_bucket(f"order:{n}"), f"order:{n}"))
    assert not committed_while(lambda: publish_many(messages(big)), small_writer(late))
    assert positions("big", late) < positions("small", late)


def test_a_big_transaction_waits_for_a_small_writer_that_wrote_first() -> None:
    def big_writer() -> None:
        with transaction.atomic():
            publish_many(messages(range(2_000)))

    assert not committed_while(lambda: publish_many(messages([1_500], tag="small")), big_writer)
    assert positions("small", 1_500) < positions("big", 1_500)


def test_writers_of_keys_in_buckets_the_big_transaction_did_not_touch_do_not_wait() -> None:
    big = list(range(100))
    touched = {order_lock_bucket(f"order:{n}") for n in big}
    outsider = next(
        n for n in range(10_000, 20_000) if order_lock_bucket(f"order:{n}") not in touched
    )
    assert committed_while(lambda: publish_many(messages(big)), small_writer(outsider))


@pytest.mark.slow
def test_big_and_small_writers_at_once_neither_deadlock_nor_fail() -> None:
    """Overlapping batches of every size, sorted as publish_many sorts them, all at once."""
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        chooser = random.Random(seed)
        try:
            for _ in range(15):
                size = chooser.choice([1, 3, 20, 400])
                with transaction.atomic():
                    publish_many(messages(chooser.sample(range(1_000), size)))
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [in_thread(functools.partial(writer, seed)) for seed in range(6)]
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert all(not thread.is_alive() for thread in threads)


@pytest.mark.slow
def test_big_and_small_transactions_at_once_keep_commit_order_per_aggregate() -> None:
    """The pattern of test_ordering's three-relay test, with transactions of 2 and of 120
    aggregates mixed: the big ones lock buckets, the small ones keys. Each transaction locks
    its aggregates' counters first, so commit order per aggregate is the counters' order, and
    the relay must deliver every aggregate's messages in that sequence."""
    names = [f"agg-{n:03d}" for n in range(200)]
    Counter.objects.bulk_create(Counter(name=name) for name in names)
    errors: list[BaseException] = []

    def writer(seed: int, keys_per_transaction: int, transactions: int) -> None:
        chooser = random.Random(seed)
        try:
            for _ in range(transactions):
                keys = sorted(chooser.sample(names, keys_per_transaction))
                with transaction.atomic():
                    counters = list(
                        Counter.objects.select_for_update().filter(name__in=keys).order_by("name")
                    )
                    Counter.objects.filter(name__in=keys).update(value=F("value") + 1)
                    publish_many(
                        Message(
                            "orders.changed",
                            {"aggregate": c.name, "seq": c.value + 1},
                            aggregate_type="counter",
                            aggregate_id=c.name,
                        )
                        for c in counters
                    )
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    plan = [(1, 120, 15), (2, 120, 15), (3, 2, 300), (4, 2, 300), (5, 2, 300)]
    threads = [in_thread(functools.partial(writer, *arguments)) for arguments in plan]
    publisher = InMemoryPublisher()
    relay = memory_relay(publisher)
    while any(thread.is_alive() for thread in threads):
        relay.drain()  # publishing while the writers write
    relay.drain()
    assert errors == []
    by_aggregate: dict[str, list[int]] = defaultdict(list)
    for message in publisher.published:
        payload = json.loads(message.body)
        by_aggregate[payload["aggregate"]].append(payload["seq"])
    final = dict(Counter.objects.values_list("name", "value"))
    assert sum(final.values()) == len(publisher.published) == 2 * 120 * 15 + 3 * 2 * 300
    for name, sequence in by_aggregate.items():
        assert sequence == list(range(1, final[name] + 1)), f"{name} out of order"
