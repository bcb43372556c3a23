"""The consumer's settings, read once per loop into a typed, frozen object."""

from __future__ import annotations

from dataclasses import dataclass

from outbox import conf


@dataclass(frozen=True)
class ConsumerSettings:
    """``OUTBOX[...]`` values a consumer uses, checked and typed by ``outbox.conf``."""

    exchange: str
    prefetch: int
    batch_size: int
    max_attempts: int
    retry_delay: float
    retry_backoff: float
    reconnect_delay: float
    #: Shared with the relay: the cap on any reconnect wait (broker or database).
    reconnect_backoff_max: float

    @classmethod
    def from_conf(cls) -> ConsumerSettings:
        """The current ``settings.OUTBOX`` (or the documented defaults)."""
        return cls(
            exchange=conf.get_str("EXCHANGE"),
            prefetch=conf.get_int("CONSUMER_PREFETCH"),
            batch_size=conf.get_int("CONSUMER_BATCH_SIZE"),
            max_attempts=conf.get_int("CONSUMER_MAX_ATTEMPTS"),
            retry_delay=conf.get_float("CONSUMER_RETRY_DELAY"),
            retry_backoff=conf.get_float("CONSUMER_RETRY_BACKOFF"),
            reconnect_delay=conf.get_float("CONSUMER_RECONNECT_DELAY"),
            reconnect_backoff_max=conf.get_float("RECONNECT_BACKOFF_MAX_SECONDS"),
        )

    def retry_delays_ms(self) -> tuple[int, ...]:
        """The wait before each retry, in milliseconds (one per retry, growing)."""
        return tuple(
            max(1, round(self.retry_delay * self.retry_backoff**number * 1000))
            for number in range(self.max_attempts - 1)
        )
