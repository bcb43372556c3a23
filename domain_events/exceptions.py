"""Errors raised by the domain-events layer."""


class DomainEventError(Exception):
    """Base class of every error this package raises on purpose."""


class EventTypeConflictError(DomainEventError, TypeError):
    """Two different event classes claim the same stable event type name."""


class CascadeDepthError(DomainEventError, RuntimeError):
    """Handlers kept recording events that trigger more handlers, past the configured depth."""


class TransactionRequiredError(DomainEventError, RuntimeError):
    """Events were dispatched outside ``transaction.atomic``; "before commit" needs one."""
