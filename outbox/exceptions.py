"""Errors raised by the outbox: every deliberate error derives from ``OutboxError``.

Each also derives from the built-in error a caller would catch without knowing this package
(``ValueError`` for bad input, ``LookupError`` for an unknown name, ``RuntimeError`` for a
call in the wrong state), so ``except ValueError`` keeps working.
"""


class OutboxError(Exception):
    """Base class of every error this package raises on purpose."""


class TransactionRequiredError(OutboxError, RuntimeError):
    """``publish()`` was called outside ``transaction.atomic`` while REQUIRE_ATOMIC is on."""


class InvalidMessageError(OutboxError, ValueError):
    """A message cannot be written: bad payload, headers or names. Nothing was written."""


class PayloadTooLargeError(InvalidMessageError):
    """The JSON-encoded payload is larger than ``OUTBOX["MAX_PAYLOAD_BYTES"]``."""


class RelayError(OutboxError, RuntimeError):
    """The relay was used in a way it cannot work (e.g. inside ``transaction.atomic``)."""


class ConsumerError(OutboxError):
    """Base class of the consumers' deliberate errors."""


class UnknownConsumerError(ConsumerError, LookupError):
    """No integration handler is registered for the consumer name."""


class InvalidHandlerError(ConsumerError, ValueError):
    """``@integration_handler`` got a bad consumer name or pattern, or no callable."""


class ConsumerSetupError(ConsumerError, RuntimeError):
    """RabbitMQ refused the consumer's exchange, queues or bindings (e.g. a queue exists with
    other arguments); the consumer stops instead of retrying."""


class RequeueRefusedError(ConsumerError, RuntimeError):
    """RabbitMQ refused a requeued dead letter: its consumer's queue does not exist (declare
    it with ``outbox_consume <consumer> --declare-only``) or the broker nacked it."""
