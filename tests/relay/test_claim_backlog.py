"""The claim over large and skewed backlogs (issue 10, items 3 and 4), on real PostgreSQL.

Before: the claim scanned ready rows in position order and, for each, looked for an older
unpublished row of its key, so its cost grew with every row blocked behind its key's head,
and at most one row per key was ever in flight. Now each key costs one probe for its head
and a publishable head brings its run (docs/relay.md, "How the claim works").
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from django.db import connection, transaction

from outbox import Message, publish_many
from outbox.models import OutboxMessage
from outbox.relay import Relay
from outbox.relay.postgresql import PostgreSQLStore, queries
from outbox.relay.publishers import InMemoryPublisher, RabbitMQPublisher
from outbox.relay.store import ClaimedMessage, RetryPolicy
from tests.broker import BoundQueue
from tests.relay.backlog import fill, vacuum_analyze
from tests.relay.conftest import consume, fast_settings, memory_relay, payloads

pytestmark = pytest.mark.django_db(transaction=True)

Status = OutboxMessage.Status
_POLICY = RetryPolicy(max_attempts=3, backoff_seconds=0, backoff_max_seconds=0)


def store(max_per_key: int | None = None) -> PostgreSQLStore:
    return PostgreSQLStore(connection.alias, retry=_POLICY, max_per_key=max_per_key)


def claim(backend: PostgreSQLStore, limit: int = 500) -> list[ClaimedMessage]:
    return backend.claim(owner="relay-1", limit=limit, lease_seconds=30)


def keys_of(claimed: list[ClaimedMessage]) -> list[str]:
    """The aggregate ids of ``claimed``, each once, in order of first appearance."""
    return list(dict.fromkeys(message.aggregate_id for message in claimed))


def fail_heads(aggregate_type: str) -> None:
    """Mark the oldest row of every key of ``aggregate_type`` failed."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE outbox_message SET status = 'failed' WHERE id IN ("
            " SELECT DISTINCT ON (ordering_key) id FROM outbox_message"
            " WHERE aggregate_type = %s ORDER BY ordering_key, position)",
            [aggregate_type],
        )


def claim_buffers(limit: int = 500) -> int:
    """Pages the claim touches (shared buffers hit or read, EXPLAIN ANALYZE BUFFERS) when run
    from the start of the key walk; the claim's writes are rolled back."""
    top = explain_claim(limit)
    return int(top["Shared Hit Blocks"]) + int(top["Shared Read Blocks"])


def explain_claim(limit: int) -> dict[str, Any]:
    """The top node of the claim's EXPLAIN (ANALYZE, BUFFERS) plan, run from the start of the
    key walk with its writes rolled back."""
    params: dict[str, Any] = {
        "owner": "explain",
        "limit": limit,
        "lease_seconds": 30,
        "after": "",
        "max_per_key": limit,
    }
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + queries()["claim"], params)
        [[document]] = cursor.fetchall()
        transaction.set_rollback(True)
    plan: dict[str, Any] = (json.loads(document) if isinstance(document, str) else document)[0]
    top: dict[str, Any] = plan["Plan"]
    return top


def plan_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(child for sub in node.get("Plans", []) for child in plan_nodes(sub))]


# -- item 3: the cost follows the batch, not the rows blocked behind heads -------------------


def test_a_failed_head_with_a_long_backlog_leaves_other_keys_claimable_at_once() -> None:
    fill(20_000, 1, aggregate_type="poison")
    fill(300, 300)
    fail_heads("poison")
    vacuum_analyze()

    claimed = claim(store())

    assert len(claimed) == 300
    assert {message.aggregate_type for message in claimed} == {"order"}
    assert len(keys_of(claimed)) == 300


def test_the_claim_reads_a_bounded_number_of_pages_behind_blocked_heads() -> None:
    # 50,000 rows behind ten failed heads, and a few hundred publishable rows elsewhere. The
    # old claim stepped over every blocked row (tens of thousands of pages); this one probes
    # each blocked key's head once and reads the publishable rows it leases.
    fill(50_000, 10, aggregate_type="blocked")
    fill(200, 200)
    fail_heads("blocked")
    vacuum_analyze()

    touched = claim_buffers()

    assert touched < 5_000, f"{touched} pages touched for 200 publishable rows"
    assert [len(claim(store()))] == [200]


def test_leased_heads_of_a_million_row_shape_cost_one_probe_each() -> None:
    # The shape a relay sees while its previous batch is being confirmed: every head leased.
    fill(20_000, 10)
    vacuum_analyze()
    assert len(claim(store(max_per_key=1), limit=10)) == 10  # the ten heads, now leased

    touched = claim_buffers()

    assert claim(store()) == []
    assert touched < 200, f"{touched} pages touched to find nothing"


def test_the_walk_over_keys_stops_once_the_batch_is_full() -> None:
    fill(3_000, 3_000)
    vacuum_analyze()

    nodes = {node.get("Subplan Name"): node for node in plan_nodes(explain_claim(limit=100))}

    # The recursive CTE is read on demand: about one key per row of the batch, not 3,000.
    assert nodes["CTE keys_after_cursor"]["Actual Rows"] <= 101
    assert nodes["CTE keys_up_to_cursor"]["Actual Loops"] == 0  # never started


# -- item 4: a hot aggregate drains many rows per round trip ---------------------------------


def test_a_hot_aggregate_is_claimed_many_rows_per_batch_in_position_order() -> None:
    fill(1_200, 1)
    backlog = list(OutboxMessage.objects.order_by("position").values_list("id", flat=True))

    first = claim(store())
    second = claim(store())

    assert [message.id for message in first] == backlog[:500]
    assert second == [], "the leased head keeps every later row of the key back"
    OutboxMessage.objects.filter(id__in=backlog[:500]).update(status=Status.PUBLISHED)
    assert [message.id for message in claim(store())] == backlog[500:1000]


def test_a_hot_aggregate_arrives_in_order_at_rabbitmq(exchange: BoundQueue) -> None:
    with transaction.atomic():
        publish_many(
            Message("orders.changed", {"n": n}, aggregate_type="order", aggregate_id="hot")
            for n in range(2_000)
        )
    relay = Relay(RabbitMQPublisher(), settings=fast_settings(batch_size=500))
    try:
        result = relay.drain()
    finally:
        relay.close()

    assert result.published == 2_000
    assert result.batches <= 5, f"{result.batches} round trips for 2,000 rows"
    assert [p["n"] for p in payloads(consume(exchange, 2_000))] == list(range(2_000))


def test_max_per_key_one_keeps_one_row_per_key_in_flight() -> None:
    fill(30, 3)

    claimed = claim(store(max_per_key=1))

    assert sorted(message.aggregate_id for message in claimed) == ["0", "1", "2"]


# -- the walk over keys ----------------------------------------------------------------------


def test_keys_take_turns_from_where_the_previous_claim_stopped() -> None:
    fill(24, 6)  # keys order:0 .. order:5, four rows each
    backend = store(max_per_key=2)
    turns = []
    for _ in range(6):
        claimed = claim(backend, limit=4)
        turns.append(keys_of(claimed))
        OutboxMessage.objects.filter(id__in=[m.id for m in claimed]).update(status=Status.PUBLISHED)

    # Without the cursor keys 0 and 1 would be served until empty before key 2 got a turn.
    assert turns == [["0", "1"], ["2", "3"], ["4", "5"], ["0", "1"], ["2", "3"], ["4", "5"]]


def test_the_walk_wraps_round_when_the_end_leaves_room() -> None:
    fill(9, 3)
    backend = store(max_per_key=1)
    assert keys_of(claim(backend, limit=2)) == ["0", "1"]
    OutboxMessage.objects.update(lease_owner="", lease_expires_at=None)

    # Starts after key 1, reaches the end after key 2, goes on from key 0.
    assert sorted(keys_of(claim(backend, limit=2))) == ["0", "2"]


def test_unkeyed_and_keyed_rows_share_the_batch() -> None:
    fill(1_000, 1_000, aggregate_type="")
    fill(1_000, 100)
    claimed = claim(store(), limit=500)
    assert sum(1 for m in claimed if not m.aggregate_type) == 250
    assert sum(1 for m in claimed if m.aggregate_type) == 250

    # Each kind takes what the other leaves.
    OutboxMessage.objects.filter(aggregate_type="order").update(status=Status.PUBLISHED)
    assert len(claim(store(), limit=500)) == 500
    OutboxMessage.objects.filter(aggregate_type="").update(status=Status.PUBLISHED)
    fill(40, 4)
    assert len(claim(store(), limit=500)) == 40


def test_a_head_another_claim_has_locked_hides_its_whole_key() -> None:
    fill(10, 1, aggregate_type="busy")
    fill(3, 3)
    head = OutboxMessage.objects.filter(aggregate_type="busy").order_by("position").first()
    assert head is not None
    # Another relay's claim, caught between locking the head and committing its lease.
    settings = connection.settings_dict
    with psycopg.connect(
        host=settings["HOST"],
        port=settings["PORT"],
        user=settings["USER"],
        dbname=settings["NAME"],
    ) as other:
        other.execute("SELECT 1 FROM outbox_message WHERE id = %s FOR UPDATE", [head.id])

        claimed = claim(store())

    assert {message.aggregate_type for message in claimed} == {"order"}, (
        "a row behind the locked head was handed out"
    )


# -- refusal inside a run (docs/relay.md, "Per-aggregate order") -------------------------------


def _write_run_with_an_unroutable_middle() -> None:
    with transaction.atomic():
        publish_many(
            Message(event_type, {"n": n}, aggregate_type="order", aggregate_id="1")
            for n, event_type in enumerate(["orders.a", "nowhere.b", "orders.c"])
        )


def test_a_refused_row_inside_a_run_is_retried_after_the_accepted_ones() -> None:
    _write_run_with_an_unroutable_middle()
    publisher = InMemoryPublisher(bindings={"events": ["orders.#"]})  # refuses "nowhere.b"
    relay = memory_relay(publisher)

    first = relay.publish_batch()
    publisher.bindings = None
    relay.drain()

    assert (first.published, first.retried) == (2, 1)
    assert [m.body for m in publisher.published] == [b'{"n": 0}', b'{"n": 2}', b'{"n": 1}']
    assert set(OutboxMessage.objects.values_list("status", flat=True)) == {Status.PUBLISHED}


def test_with_max_per_key_one_nothing_overtakes_a_refused_row(settings: Any) -> None:
    settings.OUTBOX = {**settings.OUTBOX, "MAX_PER_KEY": 1}
    _write_run_with_an_unroutable_middle()
    publisher = InMemoryPublisher(bindings={"events": ["orders.#"]})
    relay = memory_relay(publisher)

    assert relay.publish_batch().published == 1  # the head alone
    assert relay.publish_batch().retried == 1  # then the refused row alone
    publisher.bindings = None
    relay.drain()

    assert [m.body for m in publisher.published] == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']
