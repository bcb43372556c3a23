"""The long-running worker serves new commits while earlier batches wait for their confirms,
and keeps per-key order doing so (``_Pipeline.work``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import pytest
from django.db import connections, transaction

from outbox import publish
from outbox.models import OutboxMessage
from outbox.relay import Relay
from outbox.relay.publishers import OutgoingMessage, Publisher, PublishOutcome, SentBatch
from tests.relay.conftest import fast_settings

pytestmark = pytest.mark.django_db(transaction=True)


class HeldConfirms(Publisher):
    """Sends at once and answers a batch only once ``release()`` was called for it."""

    def __init__(self) -> None:
        self.sent: list[OutgoingMessage] = []
        self.released = 0  # batches, in send order, that may be answered
        self.batches: list[SentBatch] = []
        self._woken: threading.Event | None = None

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> SentBatch:
        self.sent.extend(messages)
        batch = SentBatch(messages)
        self.batches.append(batch)
        return batch

    def answered(self, batch: SentBatch) -> bool:
        return self.batches.index(batch) < self.released

    def collect(self, batch: SentBatch, *, confirm_timeout: float) -> PublishOutcome:
        deadline = time.monotonic() + confirm_timeout
        while not self.answered(batch) and time.monotonic() < deadline:
            time.sleep(0.005)
        return PublishOutcome(confirmed=[message.key for message in batch.messages])

    def release(self) -> None:
        self.released += 1
        if self._woken is not None:
            self._woken.set()

    def wait(self, seconds: float, woken: threading.Event) -> None:
        self._woken = woken
        woken.wait(seconds)

    def publish_batch(
        self,
        messages: Sequence[OutgoingMessage],
        *,
        confirm_timeout: float,
        after_send: Callable[[], None] | None = None,
    ) -> PublishOutcome:
        return self.collect(self.send_batch(messages), confirm_timeout=confirm_timeout)

    def keepalive(self) -> None:
        pass

    def close(self) -> None:
        pass


def commit(key: str, n: int) -> None:
    with transaction.atomic():
        publish("orders.placed", {"n": n}, aggregate_type="order", aggregate_id=key)


def eventually(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_worker_sends_new_commits_before_earlier_confirms_and_keeps_key_order() -> None:
    publisher = HeldConfirms()
    # A long poll interval: only notifications (and the follow-up claim) move rows here.
    relay = Relay(publisher, settings=fast_settings(poll_interval=30))
    stop = threading.Event()

    def run() -> None:
        try:
            relay.run(stop.is_set)
        finally:
            connections.close_all()  # this thread's own connection

    worker = threading.Thread(target=run)
    worker.start()
    try:
        commit("a", 0)
        eventually(lambda: len(publisher.sent) == 1)
        commit("a", 1)  # same key: waits behind the unconfirmed first row
        commit("b", 0)  # another key: goes out though the first batch is unanswered
        eventually(lambda: [m.body for m in publisher.sent][1:] == [b'{"n": 0}'])
        assert publisher.sent[1].headers["aggregate_id"] == "b"
        time.sleep(0.3)
        assert len(publisher.sent) == 2, "a's second row must wait for its first one's mark"
        publisher.release()  # a:0 confirmed and marked: the worker claims a:1 ...
        eventually(lambda: len(publisher.sent) == 3)
        assert publisher.sent[2].headers["aggregate_id"] == "a"
        assert publisher.sent[2].body == b'{"n": 1}'
        assert not publisher.answered(publisher.batches[1]), "... before b:0 is answered"
        publisher.release()
        publisher.release()
        eventually(
            lambda: OutboxMessage.objects.filter(status="published").count() == 3,
        )
    finally:
        stop.set()
        worker.join(10)
        relay.close()
    assert not worker.is_alive()
