"""Shared fixtures. Tests run against the real PostgreSQL of settings.DATABASES."""

from collections.abc import Iterator

import pytest

from domain_events.registry import HandlerRegistry, registry
from tests.broker import BoundQueue, bound_queue


@pytest.fixture
def handlers() -> Iterator[HandlerRegistry]:
    """The handler registry, restored after the test to what the installed apps registered."""
    with registry.isolated() as isolated:
        yield isolated


@pytest.fixture
def rabbit_queue() -> Iterator[BoundQueue]:
    """A private topic exchange on the real RabbitMQ with an exclusive queue bound to '#'."""
    with bound_queue() as queue:
        yield queue
