"""Retry with capped exponential backoff and jitter: one policy for refused outbox rows and
failed local jobs, each read from its own settings."""

from __future__ import annotations

import random
from dataclasses import dataclass

from outbox import conf

__all__ = ["RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """How a failed attempt is retried: capped exponential backoff with jitter, then failed."""

    max_attempts: int
    backoff_seconds: float
    backoff_max_seconds: float

    @classmethod
    def from_settings(cls, prefix: str = "") -> RetryPolicy:
        """``{prefix}MAX_ATTEMPTS``, ``{prefix}RETRY_BACKOFF_SECONDS`` and
        ``{prefix}RETRY_BACKOFF_MAX_SECONDS``: no prefix for the relay, ``"JOB_"`` for local
        jobs."""
        return cls(
            max_attempts=conf.get_int(f"{prefix}MAX_ATTEMPTS"),
            backoff_seconds=conf.get_float(f"{prefix}RETRY_BACKOFF_SECONDS"),
            backoff_max_seconds=conf.get_float(f"{prefix}RETRY_BACKOFF_MAX_SECONDS"),
        )

    def delay_after(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failed attempt: ``backoff * 2**(failures-1)``,
        capped, then "equal jitter" (between half and all of it), so that what failed together
        (a broker refusing, a payment API down) does not all come back in the same second. The
        relay's PostgreSQL query computes the same in SQL (``schedule_retry``)."""
        doubled: float = self.backoff_seconds * 2.0 ** min(failures - 1, 32)
        delay = min(doubled, self.backoff_max_seconds)
        return delay / 2 + random.random() * delay / 2
