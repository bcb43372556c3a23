from typing import Any
from unittest import mock

from django.db import connections

from outbox.checks import check_database, check_settings


def ids(messages: list[Any]) -> list[str]:
    return [message.id for message in messages]


def test_configured_settings_pass(settings: Any) -> None:
    assert check_settings() == []


def test_missing_broker_url_warns(settings: Any) -> None:
    settings.OUTBOX = {"EXCHANGE": "events"}
    assert ids(check_settings()) == ["outbox.W001"]


def test_unknown_key_is_an_error(settings: Any) -> None:
    settings.OUTBOX = {**settings.OUTBOX, "EXCHANGES": "typo"}
    assert ids(check_settings()) == ["outbox.E002"]


def test_wrong_type_is_an_error(settings: Any) -> None:
    settings.OUTBOX = {**settings.OUTBOX, "MAX_PAYLOAD_BYTES": "big"}
    [problem] = check_settings()
    assert problem.id == "outbox.E001"
    assert "MAX_PAYLOAD_BYTES" in problem.msg


def test_outbox_setting_must_be_a_dict(settings: Any) -> None:
    settings.OUTBOX = ["not", "a", "dict"]
    assert ids(check_settings()) == ["outbox.E001"]


def test_postgresql_passes_and_other_databases_warn() -> None:
    assert check_database() == []
    with mock.patch.object(connections["default"], "vendor", "sqlite"):
        [problem] = check_database()
    assert problem.id == "outbox.W002"
    assert "SKIP LOCKED" in (problem.hint or "")
