"""The beat schedule the library offers: every outbox task, each one registered by name."""

from __future__ import annotations

import pytest

from outbox import tasks
from outbox.schedule import beat_schedule


def test_schedule_names_the_relay_the_jobs_and_both_purges() -> None:
    schedule = beat_schedule()
    assert {entry["task"] for entry in schedule.values()} == {
        "outbox.tasks.publish_outbox",
        "outbox.tasks.run_jobs",
        "outbox.tasks.purge_outbox",
        "outbox.tasks.purge_inbox",
    }
    assert schedule["outbox-publish"]["schedule"] == 1.0
    assert schedule["outbox-jobs"]["schedule"] == 1.0


def test_the_jobs_entry_can_be_left_out() -> None:
    assert "outbox-jobs" not in beat_schedule(jobs_every=None)


def test_every_scheduled_task_exists() -> None:
    registered = {
        tasks.publish_outbox.name,
        tasks.run_jobs.name,
        tasks.purge_outbox.name,
        tasks.purge_inbox.name,
    }
    assert {entry["task"] for entry in beat_schedule().values()} <= registered


def test_tasks_module_offers_the_same_function() -> None:
    assert tasks.beat_schedule is beat_schedule


def test_publish_runs_expire_after_ten_periods() -> None:
    schedule = beat_schedule(publish_every=5.0)
    assert schedule["outbox-publish"]["options"]["expires"] == 50.0


def test_non_positive_period_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        beat_schedule(publish_every=0)
