"""Which integration-event handlers each consumer runs: ``@integration_handler`` and its table.

A consumer is a name (``"shipping"``) that owns one durable queue. Its handlers are registered
with event-type patterns in RabbitMQ topic syntax (``*`` is one dot-separated word, ``#`` is
zero or more); the patterns are also the queue's binding keys, because the relay routes a
message by its event type. Handler modules are found like domain-event handlers: each
installed app's ``handlers`` module is imported.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from django.utils.module_loading import autodiscover_modules

from outbox.exceptions import InvalidHandlerError, UnknownConsumerError
from outbox.wire import SHORT_STRING_BYTES, topic_matches

_CONSUMER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
_PATTERN_WORD = re.compile(r"^(\*|#|[^\s.*#]+)$")
_MATCH_CACHE_SIZE = 1000


@dataclass(frozen=True)
class IncomingMessage:
    """One integration event as a consumer's handler receives it.

    ``attempt`` counts handler runs of this message by this consumer, 1 on the first.
    ``routing_key`` is the key the producer published with, also after retries.
    ``position`` is the message's place in its aggregate's commit order (header
    ``x-outbox-position``): a later commit of the same ``aggregate_type`` and ``aggregate_id``
    has a greater one. The numbers grow but have gaps, so compare them, do not count on them.
    None for a message without an aggregate, or from a producer other than the outbox relay.
    """

    consumer: str
    message_id: str
    event_type: str
    payload: dict[str, Any]
    headers: dict[str, Any] = field(default_factory=dict)
    routing_key: str = ""
    aggregate_type: str = ""
    aggregate_id: str = ""
    timestamp: datetime | None = None
    attempt: int = 1
    position: int | None = None


IntegrationHandler = Callable[[IncomingMessage], object]
HandlerT = TypeVar("HandlerT", bound=IntegrationHandler)


@dataclass(frozen=True)
class Registration:
    pattern: str
    func: IntegrationHandler


@dataclass(frozen=True)
class ConsumerSpec:
    """A consumer's handlers in registration order; its queue is bound with ``binding_keys``."""

    name: str
    registrations: tuple[Registration, ...]
    # Matching every pattern for every message would cost more than a handler's INSERT.
    _matches: dict[str, tuple[IntegrationHandler, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    @property
    def binding_keys(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.pattern for r in self.registrations))

    def handlers_for(self, event_type: str) -> tuple[IntegrationHandler, ...]:
        """The handlers whose pattern matches ``event_type``; empty for an unknown type."""
        handlers = self._matches.get(event_type)
        if handlers is None:
            handlers = tuple(
                r.func for r in self.registrations if topic_matches(r.pattern, event_type)
            )
            if len(self._matches) < _MATCH_CACHE_SIZE:  # event types are few; senders are not
                self._matches[event_type] = handlers
        return handlers


class ConsumerRegistry:
    """Registrations by consumer name."""

    def __init__(self) -> None:
        self._registrations: dict[str, list[Registration]] = {}

    def register(self, pattern: str, func: IntegrationHandler, *, consumer: str) -> None:
        check_consumer_name(consumer)
        check_pattern(pattern)
        if not callable(func):
            raise TypeError(f"@integration_handler decorates a callable, got {func!r}")
        registrations = self._registrations.setdefault(consumer, [])
        registration = Registration(pattern, func)
        # Importing a handlers module twice must not run its handlers twice.
        if registration not in registrations:
            registrations.append(registration)

    def get(self, consumer: str) -> ConsumerSpec:
        """The consumer named ``consumer``; raises ``UnknownConsumerError`` with the known ones."""
        registrations = self._registrations.get(consumer)
        if not registrations:
            known = ", ".join(sorted(self._registrations)) or "none"
            raise UnknownConsumerError(
                f"no integration handler is registered for consumer {consumer!r}"
                f" (registered consumers: {known}); handlers are found in each installed"
                " app's handlers module"
            )
        return ConsumerSpec(consumer, tuple(registrations))

    def names(self) -> list[str]:
        return sorted(name for name, registrations in self._registrations.items() if registrations)

    @contextmanager
    def isolated(self) -> Iterator[ConsumerRegistry]:
        """Within the block, handlers registered are forgotten afterwards (for tests)."""
        saved = {name: list(registrations) for name, registrations in self._registrations.items()}
        try:
            yield self
        finally:
            self._registrations = saved


registry = ConsumerRegistry()


def integration_handler(pattern: str, *, consumer: str) -> Callable[[HandlerT], HandlerT]:
    """Register the decorated function as ``consumer``'s handler of events matching ``pattern``.

    ``pattern`` is an event type (``"orders.order_placed"``) or a RabbitMQ topic pattern
    (``"orders.*"``, ``"orders.#"``). The handler receives an ``IncomingMessage`` and runs
    inside ``transaction.atomic`` together with the consumer's inbox record, so its writes,
    the domain events it dispatches and the messages it ``publish()``-es commit exactly once
    per message id. An exception rolls all of it back and the message is retried later.
    """

    def decorate(func: HandlerT) -> HandlerT:
        registry.register(pattern, func, consumer=consumer)
        return func

    return decorate


def load_handlers() -> None:
    """Import every installed app's ``handlers`` module, which registers its handlers."""
    autodiscover_modules("handlers")


def check_consumer_name(name: object) -> None:
    """Raise ``InvalidHandlerError`` (a ValueError) unless ``name`` can name a consumer (and
    its queues)."""
    if not isinstance(name, str) or not _CONSUMER_NAME.match(name):
        raise InvalidHandlerError(
            "a consumer name is 1-100 letters, digits, '_', '.', '-', starting with a letter or"
            f" digit; got {name!r}"
        )


def check_pattern(pattern: object) -> None:
    """Raise ``InvalidHandlerError`` (a ValueError) unless ``pattern`` is an event type or a
    topic pattern."""
    if (
        not isinstance(pattern, str)
        or not pattern
        or len(pattern.encode()) > SHORT_STRING_BYTES
        or not all(_PATTERN_WORD.match(word) for word in pattern.split("."))
    ):
        raise InvalidHandlerError(
            "an integration handler pattern is an event type or a topic pattern of"
            f" dot-separated words, '*' or '#' (at most 255 bytes); got {pattern!r}"
        )
