"""Batched consumer transactions (issue 12, item 1): the deliveries already waiting are
processed in one transaction, one savepoint per message, and acknowledged after the commit;
exactly-once per message id holds through failures and crashes at every step."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from outbox.consumer.loop import ConsumerLoop, _Session, consume
from outbox.consumer.processing import Outcome
from outbox.consumer.registry import IncomingMessage, registry
from outbox.models import InboxMessage, OutboxMessage
from outbox.wire import HEADER_ATTEMPTS, HEADER_ERROR_TYPE
from tests.consumer.conftest import ConsumerBroker
from tests.consumer.crashing_consumer import EXIT_STATUS
from tests.consumer.handlers import RECORDER
from tests.consumer.test_processes import finish, wait_for_file
from tests.testapp.models import Counter, LogLine

pytestmark = pytest.mark.django_db(transaction=True)


def record_batches(monkeypatch: pytest.MonkeyPatch) -> list[list[IncomingMessage]]:
    """Every batch the loop processes from now on, as the messages it held."""
    batches: list[list[IncomingMessage]] = []
    process_batch = ConsumerLoop.process_batch

    def recording(loop: ConsumerLoop, messages: Sequence[IncomingMessage]) -> list[Outcome]:
        batches.append(list(messages))
        return process_batch(loop, messages)

    monkeypatch.setattr(ConsumerLoop, "process_batch", recording)
    return batches


def runs(message_ids: list[str]) -> dict[str, int]:
    """How many committed runs each of ``message_ids`` had."""
    texts = list(LogLine.objects.filter(text__in=message_ids).values_list("text", flat=True))
    return {message_id: texts.count(message_id) for message_id in message_ids}


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name, {"consumer": RECORDER}) or 0.0


def test_a_failing_handler_in_the_middle_of_a_batch_retries_alone_and_the_rest_commit(
    broker: ConsumerBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = record_batches(monkeypatch)
    names = [
        "outbox_consumer_messages_processed_total",
        "outbox_consumer_messages_retried_total",
        "outbox_consumer_duplicates_skipped_total",
        "outbox_consumer_handler_seconds_count",
    ]
    before = {name: metric(name) for name in names}
    ids = [broker.send(payload={"n": n, "counter": f"batch-{n}"}) for n in range(4)]
    failing = broker.send(payload={"fail_attempts": 1, "counter": "batch-failing"})
    ids += [failing] + [broker.send(payload={"n": n}) for n in range(4, 7)]
    # The first batch starts only once every delivery is waiting in the process: RabbitMQ
    # may hand them over in several reads (it did on a loaded machine), and the batch is
    # whatever is waiting when it starts.
    step = _Session._step
    deadline = time.monotonic() + 10

    def step_once_all_wait(session: _Session, channel: Any) -> bool:
        if not batches and len(session.waiting) < len(ids) and time.monotonic() < deadline:
            return False
        return step(session, channel)

    monkeypatch.setattr(_Session, "_step", step_once_all_wait)

    assert consume(RECORDER, batch_size=20, max_messages=len(ids) + 1, until_idle=10) == 8 + 1

    shared = next(batch for batch in batches if any(m.message_id == failing for m in batch))
    shared_ids = [message.message_id for message in shared]
    assert shared_ids.index(failing) > 0, shared_ids  # messages before it in its batch
    assert shared_ids[-1] != failing, shared_ids  # and after it
    # Every message committed once; the failing one on its retry, which ran alone.
    assert runs(ids) == dict.fromkeys(ids, 1)
    assert InboxMessage.objects.filter(message_id__in=ids).count() == len(ids)
    assert [m.attempt for batch in batches for m in batch if m.message_id == failing] == [1, 2]
    # The failed savepoint took its writes along (a Counter and an outbox row), nothing else.
    assert Counter.objects.count() == 5
    assert OutboxMessage.objects.count() == 5
    assert broker.dead_letters(1, timeout=0.3) == []
    assert broker.depth(broker.topology.queue) == 0
    changes = {name: metric(name) - before[name] for name in names}
    assert changes == {
        "outbox_consumer_messages_processed_total": 8,
        "outbox_consumer_messages_retried_total": 1,
        "outbox_consumer_duplicates_skipped_total": 0,
        "outbox_consumer_handler_seconds_count": 9,  # the failed run is timed too
    }


def test_a_statement_timeout_in_a_batch_is_that_message_failure_not_an_outage(
    broker: ConsumerBroker,
) -> None:
    # The timeout aborts the batch's transaction; judged inside it, every query fails and
    # the whole batch would look like a database outage, held forever.
    good = [broker.send(payload={"n": 1})]
    doomed = broker.send(payload={"time_out": True})
    good += [broker.send(payload={"n": 2})]

    assert consume(RECORDER, max_messages=5, until_idle=10) == 5  # 3 attempts of the doomed

    [dead] = broker.dead_letters(1)
    headers = dead.properties.headers or {}
    assert dead.properties.message_id == doomed
    assert headers[HEADER_ATTEMPTS] == 3
    assert headers[HEADER_ERROR_TYPE] == "django.db.utils.OperationalError"
    assert runs(good) == dict.fromkeys(good, 1)
    assert not InboxMessage.objects.filter(message_id=doomed).exists()


def test_a_handler_that_swallows_a_database_error_fails_alone_and_loses_nothing(
    broker: ConsumerBroker,
) -> None:
    # Its transaction is aborted, so the batch's COMMIT would silently roll everything back
    # and acknowledge the whole batch unprocessed.
    good = [broker.send(payload={"n": 1})]
    doomed = broker.send(payload={"swallow_error": True})
    good += [broker.send(payload={"n": 2})]

    assert consume(RECORDER, max_messages=5, until_idle=10) == 5  # 3 attempts of the doomed

    assert runs(good) == dict.fromkeys(good, 1)
    assert InboxMessage.objects.filter(message_id__in=good).count() == 2
    [dead] = broker.dead_letters(1)
    headers = dead.properties.headers or {}
    assert dead.properties.message_id == doomed
    assert headers[HEADER_ERROR_TYPE] == "outbox.consumer.processing.TransactionAbortedError"


def test_duplicates_and_dead_letters_are_counted(broker: ConsumerBroker) -> None:
    names = [
        "outbox_consumer_messages_processed_total",
        "outbox_consumer_duplicates_skipped_total",
        "outbox_consumer_messages_dead_lettered_total",
    ]
    before = {name: metric(name) for name in names}
    first = broker.send(payload={"n": 1})
    broker.send(payload={"n": 1}, message_id=first)
    broker.send("test.happened", properties={"type": None}, message_id="no-type")

    assert consume(RECORDER, max_messages=3, until_idle=5) == 3

    assert {name: metric(name) - before[name] for name in names} == {
        "outbox_consumer_messages_processed_total": 1,
        "outbox_consumer_duplicates_skipped_total": 1,
        "outbox_consumer_messages_dead_lettered_total": 1,
    }
    assert runs([first]) == {first: 1}
    assert [d.properties.message_id for d in broker.dead_letters(1)] == ["no-type"]


def test_a_batch_size_of_one_is_one_transaction_per_message(
    broker: ConsumerBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = record_batches(monkeypatch)
    ids = [broker.send(payload={"n": n}) for n in range(4)]
    assert consume(RECORDER, batch_size=1, max_messages=4, until_idle=5) == 4
    assert [len(batch) for batch in batches] == [1, 1, 1, 1]
    assert runs(ids) == dict.fromkeys(ids, 1)


def record_steps(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str]]]:
    """("start", ids) when the main thread hands a batch to the worker, ("settle", ids) when
    it settles one, in the order they happen."""
    steps: list[tuple[str, list[str]]] = []
    submit, settle = ConsumerLoop.submit, ConsumerLoop.settle

    def starting(loop: ConsumerLoop, messages: Sequence[IncomingMessage]) -> Future[list[Outcome]]:
        steps.append(("start", [message.message_id for message in messages]))
        return submit(loop, messages)

    def settling(loop: ConsumerLoop, channel: Any, settled: Sequence[Any]) -> None:
        steps.append(("settle", [delivery.properties.message_id for delivery, _ in settled]))
        settle(loop, channel, settled)

    monkeypatch.setattr(ConsumerLoop, "submit", starting)
    monkeypatch.setattr(ConsumerLoop, "settle", settling)
    return steps


def test_the_next_batch_runs_while_the_last_one_is_settled(
    broker: ConsumerBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = record_steps(monkeypatch)
    ids = [broker.send(payload={"sleep": 0.3})] + [broker.send(payload={"n": n}) for n in range(6)]

    assert consume(RECORDER, batch_size=3, max_messages=len(ids), until_idle=10) == len(ids)

    # The second batch had started before the first was settled.
    first = steps.index(("settle", ids[:3]))
    assert [step for step in steps[:first] if step[0] == "start"] == [
        ("start", ids[:3]),
        ("start", ids[3:6]),
    ], steps
    assert [kind for kind, _ in steps].count("settle") == 3, steps
    assert runs(ids) == dict.fromkeys(ids, 1)
    # Every delivery was acknowledged: nothing is redelivered once the consumer is gone.
    broker.connection.sleep(0.5)
    assert broker.depth(broker.topology.queue) == 0


def test_a_stop_waits_for_the_batch_started_ahead_and_acknowledges_it(
    broker: ConsumerBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = record_steps(monkeypatch)
    loop = ConsumerLoop(registry.get(RECORDER), batch_size=2, until_idle=10)
    settle = ConsumerLoop.settle

    def settle_then_stop(self: ConsumerLoop, channel: Any, settled: Sequence[Any]) -> None:
        settle(self, channel, settled)
        self.stop()  # once the first batch is settled: the second has started already

    monkeypatch.setattr(loop, "settle", settle_then_stop.__get__(loop))
    ids = [broker.send(payload={"sleep": 0.3})] + [broker.send(payload={"n": n}) for n in range(6)]

    assert loop.run() == 4  # the first batch and the one started ahead of its settlement
    assert [batch for kind, batch in steps if kind == "start"] == [ids[:2], ids[2:4]]
    assert runs(ids) == {**dict.fromkeys(ids[:4], 1), **dict.fromkeys(ids[4:], 0)}
    # The batch started ahead was acknowledged, not left for redelivery; the rest went back.
    broker.connection.sleep(0.5)
    assert broker.depth(broker.topology.queue) == 3


@pytest.mark.slow
def test_a_crash_between_the_commit_and_the_ack_redelivers_and_the_inbox_skips_it(
    broker: ConsumerBroker,
) -> None:
    ids = [broker.send(payload={"n": n, "counter": f"crash-{n}"}) for n in range(6)]
    crashing = broker.start_process("-m", "tests.consumer.crashing_consumer")
    output = crashing.communicate(timeout=60)[0]
    assert crashing.returncode == EXIT_STATUS, output
    committed = int(output.split("committed ")[1].split()[0])
    # The batch committed, effects and inbox records together; no ack went out.
    assert sum(runs(ids).values()) == committed >= 1
    assert InboxMessage.objects.count() == committed
    deadline = time.monotonic() + 10
    while broker.depth(broker.topology.queue) < len(ids):  # the broker requeues them
        assert time.monotonic() < deadline, "the unacknowledged messages were not requeued"
        time.sleep(0.05)

    output = finish(broker.start_consumer("--until-idle", "2"))

    assert f"{len(ids)} messages settled" in output
    assert runs(ids) == dict.fromkeys(ids, 1)
    assert InboxMessage.objects.count() == len(ids)
    # The handler's other effects too: one aggregate and one outbox row per message.
    assert Counter.objects.count() == len(ids)
    assert OutboxMessage.objects.count() == len(ids)
    assert broker.depth(broker.topology.queue) == 0


@pytest.mark.slow
def test_a_consumer_killed_mid_batch_commits_none_of_it(
    broker: ConsumerBroker, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    before = [broker.send(payload={"n": n}) for n in range(3)]
    paused = broker.send(payload={"pause_file": str(started)})
    after = [broker.send(payload={"n": n}) for n in range(3, 5)]
    first = broker.start_consumer()
    wait_for_file(started, first)
    first.kill()  # SIGKILL while the fourth message's handler hangs in the batch
    first.communicate(timeout=30)

    # The messages before it in its batch ran but did not commit: one transaction.
    assert sum(runs(before).values()) == 0
    assert not InboxMessage.objects.exists()

    finish(broker.start_consumer("--until-idle", "2"))

    ids = [*before, paused, *after]
    assert runs(ids) == dict.fromkeys(ids, 1)
    assert InboxMessage.objects.count() == len(ids)


def test_a_batch_is_acknowledged_only_once_its_records_are_committed(
    broker: ConsumerBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    #: For each settled batch: the ids processed, and those of them committed at that point.
    at_ack: list[tuple[set[str], set[str]]] = []
    settle = ConsumerLoop.settle

    def checking(loop: ConsumerLoop, channel: Any, settled: Sequence[tuple[Any, Outcome]]) -> None:
        processed = {
            delivery.properties.message_id
            for delivery, outcome in settled
            if outcome.kind == "processed"
        }
        # This thread's connection is not the worker's: it sees only what has committed.
        committed = set(
            InboxMessage.objects.filter(message_id__in=processed).values_list(
                "message_id", flat=True
            )
        )
        at_ack.append((processed, committed))
        settle(loop, channel, settled)  # the acknowledgement

    monkeypatch.setattr(ConsumerLoop, "settle", checking)
    ids = [broker.send(payload={"n": n}) for n in range(6)]

    assert consume(RECORDER, batch_size=3, max_messages=len(ids), until_idle=10) == len(ids)

    assert set().union(*(processed for processed, _ in at_ack)) == set(ids)
    assert all(processed == committed for processed, committed in at_ack), at_ack
    assert broker.depth(broker.topology.queue) == 0
