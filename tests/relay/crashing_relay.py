"""A relay that SIGKILLs itself at one step of its first batch, for the crash tests.

Run as ``python -m tests.relay.crashing_relay <point>`` from the repository root, with the
environment of ``relay_env``. The points: ``after_claim`` (rows leased, nothing sent),
``after_publish`` (everything sent, no confirm read), ``after_confirm`` (the broker confirmed,
nothing marked published).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

import django

from outbox.relay.publishers import (
    OutgoingMessage,
    PublishOutcome,
    RabbitMQPublisher,
    SentBatch,
)

CRASH_POINTS = ("after_claim", "after_publish", "after_confirm")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class CrashingPublisher(RabbitMQPublisher):
    """The real publisher, killed at ``crash_at`` around the relay's first batch."""

    def __init__(self, crash_at: str) -> None:
        if crash_at not in CRASH_POINTS:
            raise ValueError(f"crash point must be one of {CRASH_POINTS}, got {crash_at!r}")
        super().__init__()
        self.crash_at = crash_at

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> SentBatch:
        # The relay sends right after it claims: dying here is dying after the claim.
        if self.crash_at == "after_claim":
            _die()
        sent = super().send_batch(messages)
        if self.crash_at == "after_publish":
            _die()
        return sent

    def collect(self, batch: SentBatch, *, confirm_timeout: float) -> PublishOutcome:
        outcome = super().collect(batch, confirm_timeout=confirm_timeout)
        if self.crash_at == "after_confirm" and outcome.confirmed:
            _die()
        return outcome


def main(crash_at: str) -> None:
    """Drain once through a ``CrashingPublisher``; it is expected never to return."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.relay.settings"  # reads OUTBOX_TEST_OVERRIDES
    django.setup()
    from outbox.relay import Relay

    Relay(CrashingPublisher(crash_at)).drain()


if __name__ == "__main__":
    main(sys.argv[1])
