"""``manage.py outbox_consume`` as real processes: killed, stopped, and two on one queue."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter as Tally
from pathlib import Path

import pytest

from outbox.models import InboxMessage
from outbox.wire import HEADER_ATTEMPTS, HEADER_REASON
from tests.consumer.conftest import ConsumerBroker
from tests.consumer.foreign import double, foreign_encoding
from tests.testapp.models import LogLine

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def finish(process: subprocess.Popen[str], timeout: float = 60.0) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output = process.communicate()[0]
        raise AssertionError(f"consumer still running after {timeout}s: {output}") from None
    assert process.returncode == 0, output
    return output


def wait_for_file(path: Path, process: subprocess.Popen[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"consumer exited early: {process.communicate()[0]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout}s")
        time.sleep(0.05)


def test_consumer_killed_mid_handler_loses_nothing_and_processes_once_after_restart(
    broker: ConsumerBroker, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    message_id = broker.send(payload={"pause_file": str(started)})
    first = broker.start_consumer()
    wait_for_file(started, first)
    # The handler has written its LogLine and hangs with the transaction open.
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)

    assert LogLine.objects.filter(text=message_id).count() == 0
    assert not InboxMessage.objects.exists()

    finish(broker.start_consumer("--until-idle", "2"))

    assert LogLine.objects.filter(text=message_id).count() == 1
    assert InboxMessage.objects.filter(message_id=message_id).count() == 1
    assert broker.depth(broker.topology.queue) == 0
    assert broker.dead_letters(1, timeout=0.3) == []


def test_sigterm_finishes_the_message_in_hand_then_exits(
    broker: ConsumerBroker, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    in_hand = broker.send(payload={"pause_file": str(started), "pause_seconds": 2})
    waiting = broker.send(payload={"n": 2})
    process = broker.start_consumer("--prefetch", "1")
    wait_for_file(started, process)
    process.send_signal(signal.SIGTERM)
    output = finish(process, timeout=30)

    assert "SIGTERM" in output
    assert "1 message settled" in output
    # The message in hand committed and was acknowledged; the next one was left queued.
    assert LogLine.objects.filter(text=in_hand).count() == 1
    assert LogLine.objects.filter(text=waiting).count() == 0
    assert broker.depth(broker.topology.queue) == 1


def test_two_consumer_processes_on_one_queue_process_each_message_once(
    broker: ConsumerBroker,
) -> None:
    processes = [broker.start_consumer("--until-idle", "3") for _ in range(2)]
    broker.wait_for_consumers(2)
    message_ids = [broker.send(payload={"n": n}) for n in range(150)]
    for message_id in message_ids:
        # Every message twice in a row: the copies usually reach both processes at once.
        broker.send(payload={"again": True}, message_id=message_id)

    outputs = [finish(process) for process in processes]

    runs = Tally(LogLine.objects.values_list("text", flat=True))
    assert runs == dict.fromkeys(message_ids, 1)
    assert InboxMessage.objects.count() == len(message_ids)
    settled = [int(output.strip().splitlines()[-1].split()[1]) for output in outputs]
    assert sum(settled) == 2 * len(message_ids)
    assert all(count > 0 for count in settled), settled


def test_the_poison_messages_that_killed_outbox_consume_are_dead_lettered(
    broker: ConsumerBroker,
) -> None:
    # Issue 10, item 2: each of these killed the process, and again after every restart.
    broker.send(body=b"[" * 100_000 + b"]" * 100_000, message_id="nested-json")
    broker.send(properties={"timestamp": 2**62}, message_id="timestamp")
    broker.send(
        payload={"fail_attempts": 99},
        message_id="attempts",
        properties={
            "headers": {"aggregate_type": "test", "aggregate_id": "1", HEADER_ATTEMPTS: -10}
        },
    )
    with foreign_encoding():
        broker.send(
            "other.event",
            routing_key="test.foreign",
            message_id="double-header",
            properties={"headers": {"x-price": double(1e19)}},
        )
    good = broker.send(payload={"n": 1})

    output = finish(broker.start_consumer("--until-idle", "3"))

    assert "5 messages settled" in output
    assert LogLine.objects.filter(text=good).count() == 1
    dead = {d.properties.message_id: d.properties.headers or {} for d in broker.dead_letters(4)}
    assert dead.keys() == {"nested-json", "timestamp", "attempts", "double-header"}
    assert dead["double-header"]["x-price"] == "10000000000000000000"
    assert all(headers[HEADER_REASON] for headers in dead.values())
