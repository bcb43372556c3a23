"""OUTBOX["MAX_PER_KEY"]: validated by the system checks and read by both stores."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from outbox.checks import check_settings
from outbox.relay.orm import ORMStore
from outbox.relay.postgresql import PostgreSQLStore
from outbox.relay.store import RetryPolicy, store_for

_POLICY = RetryPolicy(max_attempts=3, backoff_seconds=0, backoff_max_seconds=0)


@pytest.mark.parametrize("value", [0, -1, 2.5, "10", True])
def test_anything_but_a_positive_integer_is_reported(settings: Any, value: object) -> None:
    settings.OUTBOX = {**settings.OUTBOX, "MAX_PER_KEY": value}

    [problem] = check_settings()

    assert problem.id == "outbox.E001"
    assert "MAX_PER_KEY" in problem.msg
    with pytest.raises(ImproperlyConfigured, match="MAX_PER_KEY"):
        store_for()


@pytest.mark.parametrize("value", [1, 50, None])
def test_a_positive_integer_or_none_passes(settings: Any, value: int | None) -> None:
    settings.OUTBOX = {**settings.OUTBOX, "MAX_PER_KEY": value}

    assert check_settings() == []
    backend = store_for()
    assert isinstance(backend, PostgreSQLStore)
    assert backend.max_per_key == value


@pytest.mark.parametrize("store_type", [PostgreSQLStore, ORMStore])
def test_both_stores_read_the_setting_unless_given_a_cap(
    settings: Any, store_type: type[PostgreSQLStore] | type[ORMStore]
) -> None:
    settings.OUTBOX = {**settings.OUTBOX, "MAX_PER_KEY": 7}

    assert store_type(connection.alias, retry=_POLICY).max_per_key == 7
    assert store_type(connection.alias, retry=_POLICY, max_per_key=2).max_per_key == 2


@pytest.mark.parametrize("store_type", [PostgreSQLStore, ORMStore])
@pytest.mark.parametrize("cap", [0, -3, True])
def test_a_cap_that_is_not_a_positive_integer_is_refused(
    store_type: type[PostgreSQLStore] | type[ORMStore], cap: int
) -> None:
    with pytest.raises(ValueError, match="max_per_key must be a positive integer"):
        store_type(connection.alias, retry=_POLICY, max_per_key=cap)
