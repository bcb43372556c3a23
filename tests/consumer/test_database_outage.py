"""A database outage is not the message's fault (issue 10, item 6): the consumer keeps the
message, does not count the attempt, waits with a capped backoff and goes on once PostgreSQL
is back, so nothing is dead-lettered and the drain is late by about the outage's length.

Only this test's own database goes down (``tests.outages``); the retry ladder is shortened to
0.2 s + 0.3 s, far shorter than the outages, as 1 + 5 + 25 + 125 s is in production; the
wait between two tries of a held message is capped by the default RECONNECT_BACKOFF_MAX_SECONDS.
"""

from __future__ import annotations

import os
import time

import pytest
from django.db import DatabaseError, OperationalError, connection

from outbox.consumer.processing import REASON_HANDLER_FAILED, is_database_outage
from outbox.models import InboxMessage
from outbox.wire import HEADER_ATTEMPTS, HEADER_REASON
from tests.consumer.conftest import ConsumerBroker, consumer_running
from tests.outages import database_down, database_down_later
from tests.testapp.models import LogLine

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

#: The outage of the drain test; set OUTBOX_TEST_OUTAGE_SECONDS to measure others (5 to 30).
OUTAGE_SECONDS = float(os.environ.get("OUTBOX_TEST_OUTAGE_SECONDS", "8"))


def processed(message_ids: list[str]) -> int:
    """How many of ``message_ids`` committed; -1 while the database is unreachable."""
    try:
        return LogLine.objects.filter(text__in=message_ids).count()
    except DatabaseError:
        connection.close()  # the outage terminated it; the next query reconnects
        return -1


def wait_for(message_ids: list[str], timeout: float) -> float:
    """Seconds until all of ``message_ids`` were processed."""
    started = time.monotonic()
    while processed(message_ids) != len(message_ids):
        assert time.monotonic() - started < timeout, "the messages were not all processed"
        time.sleep(0.1)
    return time.monotonic() - started


def send_stream(broker: ConsumerBroker, count: int) -> list[str]:
    # 50 ms per message: the drain takes a few seconds, so the outage falls in its middle.
    return [broker.send(payload={"sleep": 0.05, "n": n}) for n in range(count)]


def assert_each_processed_once(message_ids: list[str]) -> None:
    runs = list(LogLine.objects.filter(text__in=message_ids).values_list("text", flat=True))
    assert sorted(runs) == sorted(message_ids)
    assert InboxMessage.objects.filter(message_id__in=message_ids).count() == len(message_ids)


def test_an_outage_during_a_drain_delays_it_by_the_outage_and_dead_letters_nothing(
    broker: ConsumerBroker,
) -> None:
    with consumer_running():
        baseline_ids = send_stream(broker, 80)
        baseline = wait_for(baseline_ids, timeout=60)

        outage_ids = send_stream(broker, 80)
        with database_down_later(
            str(connection.settings_dict["NAME"]), after=1.0, for_seconds=OUTAGE_SECONDS
        ):
            with_outage = wait_for(outage_ids, timeout=120)

    delay = with_outage - baseline
    print(f"drain {baseline:.1f}s, with an {OUTAGE_SECONDS:.0f}s outage {with_outage:.1f}s")
    broker.reconnect()  # its idle connection may not have outlived a shared broker's restart
    assert broker.dead_letters(1, timeout=0.5) == []
    assert_each_processed_once(baseline_ids + outage_ids)
    assert delay <= OUTAGE_SECONDS + 5, (baseline, with_outage)


def test_messages_arriving_during_an_outage_are_processed_after_it(
    broker: ConsumerBroker,
) -> None:
    with consumer_running():
        broker.wait_for_consumers(1)
        with database_down_later(str(connection.settings_dict["NAME"]), after=0, for_seconds=6):
            time.sleep(0.5)
            message_ids = [broker.send(payload={"n": n}) for n in range(30)]
            # Every message has arrived while the database is down.
        wait_for(message_ids, timeout=60)

    broker.reconnect()
    assert broker.dead_letters(1, timeout=0.5) == []
    assert_each_processed_once(message_ids)
    # The retry queues were never used either: no attempt was counted.
    for number in range(1, len(broker.topology.retry_delays_ms) + 1):
        assert broker.depth(broker.topology.retry_queue(number)) == 0


def test_an_operational_error_on_a_working_connection_is_the_message_failure() -> None:
    # A statement timeout is an OperationalError too, but the database answered: it is the
    # message's failure and uses its attempts.
    with connection.cursor() as cursor:
        cursor.execute("SET statement_timeout = 1")
        with pytest.raises(OperationalError) as raised:
            cursor.execute("SELECT pg_sleep(1)")
        assert not is_database_outage(raised.value, "default")
        cursor.execute("RESET statement_timeout")


def test_a_refused_connection_is_an_outage() -> None:
    connection.close()
    with database_down(str(connection.settings_dict["NAME"])):
        with pytest.raises(OperationalError) as raised:
            connection.ensure_connection()
        assert is_database_outage(raised.value, "default")


def test_an_outage_that_breaks_the_open_transaction_costs_no_attempt(
    broker: ConsumerBroker,
) -> None:
    with consumer_running():
        broker.wait_for_consumers(1)
        # The handler sleeps 3 s in its transaction; 1 s in, the connection is terminated.
        with database_down_later(str(connection.settings_dict["NAME"]), after=1, for_seconds=4):
            message_id = broker.send(payload={"sleep": 3})
            wait_for([message_id], timeout=60)

    broker.reconnect()
    assert broker.dead_letters(1, timeout=0.5) == []
    assert_each_processed_once([message_id])


def test_a_lost_connection_while_the_database_is_up_uses_the_attempts(
    broker: ConsumerBroker,
) -> None:
    # The handler ends its own backend: not an outage, and holding the message would stop
    # the stream for good. It is retried and dead-lettered like any failure.
    with consumer_running():
        doomed = broker.send(payload={"kill_connection": True})
        good = broker.send(payload={"n": 1})
        wait_for([good], timeout=30)
        [dead] = broker.dead_letters(1, timeout=30)

    headers = dead.properties.headers or {}
    assert dead.properties.message_id == doomed
    assert headers[HEADER_REASON] == REASON_HANDLER_FAILED
    assert headers[HEADER_ATTEMPTS] == 3
    assert not InboxMessage.objects.filter(message_id=doomed).exists()
