"""Shared fixtures. Tests run against the real PostgreSQL of settings.DATABASES."""

from collections.abc import Iterator

import pytest

from domain_events.registry import HandlerRegistry, registry
from outbox import kick
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


@pytest.fixture(autouse=True)
def _no_kick_on_commit_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test settings configure Celery on the shared Redis, so the kick on commit would be
    on (auto) and every test commit would queue a task there for any helper's worker. Here
    Celery counts as not configured; a test that wants the kick sets KICK_ON_COMMIT True."""
    monkeypatch.setattr(kick, "_celery_ready", False)
