"""The kick on commit end to end: a writer process commits, a real Celery worker (Redis broker,
two prefork processes, no beat) publishes to the real RabbitMQ.

Without beat the only thing that can start ``publish_outbox`` is the kick, so "every row
published" shows the kick works. Each test uses its own Celery queue on the shared Redis
(CELERY_TASK_DEFAULT_QUEUE, read by example_project/settings.py) and its own exchange.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import IO, Any

import pytest
import redis
from django.db import connection

from outbox import kick
from outbox.models import OutboxMessage
from tests.broker import BoundQueue
from tests.relay.conftest import REPO_ROOT, consume

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def celery_queue() -> Iterator[str]:
    """A private Celery queue name; whatever is left in it is deleted afterwards."""
    name = f"outbox-kick-test-{uuid.uuid4().hex[:8]}"
    yield name
    redis.Redis.from_url(REDIS_URL).delete(name)


def environment(queue: str, exchange: str, **outbox: Any) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.relay.settings",
        OUTBOX_DB_NAME=str(connection.settings_dict["NAME"]),
        OUTBOX_TEST_OVERRIDES=json.dumps({"EXCHANGE": exchange, **outbox}),
        CELERY_TASK_DEFAULT_QUEUE=queue,
        CELERY_BROKER_URL=REDIS_URL,
    )
    return env


class Process:
    """A subprocess whose stderr is collected by a thread (so it never blocks on a full pipe)."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        assert self.popen.stderr is not None
        self._reader = threading.Thread(target=self._read, args=(self.popen.stderr,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line)

    def wait_for_line(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if time.monotonic() > deadline or self.popen.poll() is not None:
                raise AssertionError(
                    f"no {text!r} from {self.popen.args!r}:\n{''.join(self.lines)}"
                )
            time.sleep(0.1)

    def read_json(self) -> Any:
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline()
        assert line, "".join(self.lines)
        return json.loads(line)

    def say(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def stop(self) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.close()  # the writer exits at the end of its input
        try:
            self.popen.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._reader.join(5)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def started() -> Iterator[list[Process]]:
    processes: list[Process] = []
    yield processes
    for process in processes:
        process.stop()


def start_worker(started: list[Process], env: dict[str, str]) -> Process:
    worker = Process(
        [
            sys.executable,
            *("-m", "celery", "-A", "example_project", "worker"),
            *("--pool=prefork", "--concurrency=2", "--loglevel=INFO", "--without-heartbeat"),
            *("--without-mingle", "--without-gossip"),
        ],
        env,
    )
    started.append(worker)
    worker.wait_for_line(" ready.")
    return worker


def start_writer(started: list[Process], env: dict[str, str], commits: int) -> Process:
    writer = Process(
        [sys.executable, "-m", "tests.celery.kick_writer", str(commits), "6"],
        env,
    )
    started.append(writer)
    return writer


def wait_until_published(count: int, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    published = 0
    while time.monotonic() < deadline:
        published = OutboxMessage.objects.filter(status=OutboxMessage.Status.PUBLISHED).count()
        if published >= count:
            break
        time.sleep(0.1)
    return published


def test_a_burst_of_commits_is_published_by_a_few_kicks(
    rabbit_queue: BoundQueue, celery_queue: str, started: list[Process]
) -> None:
    env = environment(celery_queue, rabbit_queue.exchange, KICK_ON_COMMIT=True)
    start_worker(started, env)
    commits = 300
    writer = start_writer(started, env, commits)
    burst = writer.read_json()
    assert burst["committed"] == commits

    assert wait_until_published(commits) == commits  # no beat: only kicks publish
    writer.say("report")
    sent = writer.read_json()["sent"]
    # Kicks are at least MIN_INTERVAL_SECONDS apart, plus one after the burst.
    assert 1 <= sent <= burst["elapsed"] / kick.MIN_INTERVAL_SECONDS + 2
    assert sent < commits
    # Two worker processes took kicks at the same time; every message went out once.
    received = consume(rabbit_queue, commits, timeout=30)
    ids = [message.properties.message_id for message in received]
    assert len(ids) == len(set(ids)) == commits


def test_without_the_kick_nothing_is_published_until_beat(
    rabbit_queue: BoundQueue, celery_queue: str, started: list[Process]
) -> None:
    """The control: the same worker and writer with KICK_ON_COMMIT off publish nothing."""
    env = environment(celery_queue, rabbit_queue.exchange, KICK_ON_COMMIT=False)
    start_worker(started, env)
    writer = start_writer(started, env, 20)
    assert writer.read_json()["committed"] == 20
    assert wait_until_published(20, timeout=3) == 0
    writer.say("report")
    assert writer.read_json()["sent"] == 0


def test_an_unreachable_celery_broker_is_logged_once_and_commits_succeed(
    rabbit_queue: BoundQueue, celery_queue: str, started: list[Process]
) -> None:
    env = environment(celery_queue, rabbit_queue.exchange, KICK_ON_COMMIT=True)
    env["CELERY_BROKER_URL"] = "redis://127.0.0.1:1/0"  # nothing listens there
    writer = start_writer(started, env, 200)
    assert writer.read_json()["committed"] == 200  # no exception reached a commit
    deadline = time.monotonic() + 60
    report = {"failures": 0}
    while report["failures"] < 2 and time.monotonic() < deadline:  # the retry failed too
        time.sleep(0.5)
        writer.say("report")
        report = writer.read_json()
    assert report == {"sent": 0, "failures": 2}
    writer.stop()
    failures = [line for line in writer.lines if "kick on commit: cannot send" in line]
    assert len(failures) == 1, writer.lines
    assert "127.0.0.1:1" in failures[0]
    assert OutboxMessage.objects.count() == 200
