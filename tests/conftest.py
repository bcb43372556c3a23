"""Shared fixtures. Tests run against the real PostgreSQL of settings.DATABASES."""

from collections.abc import Iterator

import pytest

from domain_events.registry import HandlerRegistry, registry


@pytest.fixture
def handlers() -> Iterator[HandlerRegistry]:
    """The handler registry, restored after the test to what the installed apps registered."""
    with registry.isolated() as isolated:
        yield isolated
