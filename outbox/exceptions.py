"""Errors raised by the outbox."""


class OutboxError(Exception):
    """Base class of every error this package raises on purpose."""


class TransactionRequiredError(OutboxError, RuntimeError):
    """``publish()`` was called outside ``transaction.atomic`` while REQUIRE_ATOMIC is on."""


class InvalidMessageError(OutboxError, ValueError):
    """A message cannot be written: bad payload, headers or names. Nothing was written."""


class PayloadTooLargeError(InvalidMessageError):
    """The JSON-encoded payload is larger than ``OUTBOX["MAX_PAYLOAD_BYTES"]``."""
