"""A WAL relay that SIGKILLs itself at one step of its first batch of outbox rows, for the
crash tests; without a crash point it runs until SIGTERM.

Run as ``python -m tests.wal.crashing_wal_relay`` from the repository root with the
environment of ``tests.relay.conftest.relay_env`` plus ``OUTBOX_WAL_CRASH_AT``, one of:
``after_read`` (Debezium handed the batch over, nothing sent), ``after_publish`` (everything
sent, no confirm read), ``after_confirm`` (RabbitMQ confirmed, nothing marked),
``after_mark`` (marked published, Debezium's offset not stored).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Sequence

import django

from outbox.relay.publishers import (
    OutgoingMessage,
    PublishOutcome,
    RabbitMQPublisher,
    SentBatch,
)

CRASH_POINTS = ("after_read", "after_publish", "after_confirm", "after_mark")
CRASH_AT = os.environ.get("OUTBOX_WAL_CRASH_AT", "")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class CrashingPublisher(RabbitMQPublisher):
    def send_batch(self, messages: Sequence[OutgoingMessage]) -> SentBatch:
        if CRASH_AT == "after_read" and messages:
            _die()
        sent = super().send_batch(messages)
        if CRASH_AT == "after_publish" and messages:
            _die()
        return sent

    def collect(self, batch: SentBatch, *, confirm_timeout: float) -> PublishOutcome:
        outcome = super().collect(batch, confirm_timeout=confirm_timeout)
        if CRASH_AT == "after_confirm" and outcome.confirmed:
            _die()
        return outcome


def main() -> None:
    if CRASH_AT and CRASH_AT not in CRASH_POINTS:
        raise SystemExit(f"OUTBOX_WAL_CRASH_AT must be one of {CRASH_POINTS}, got {CRASH_AT!r}")
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.relay.settings"  # reads OUTBOX_TEST_OVERRIDES
    django.setup()
    from outbox.relay.postgresql import PostgreSQLStore
    from outbox.relay.store import RetryPolicy
    from outbox.relay.wal import WalRelay

    class CrashingStore(PostgreSQLStore):
        def mark_published(self, ids: Sequence[int]) -> int:
            marked = super().mark_published(ids)
            if CRASH_AT == "after_mark" and ids:
                _die()
            return marked

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    relay = WalRelay(
        CrashingPublisher(),
        store=CrashingStore("default", retry=RetryPolicy.from_settings()),
        sweep_interval=3600.0,
    )
    relay.run(stop.is_set)


if __name__ == "__main__":
    main()
