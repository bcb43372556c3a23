"""The conventions every ``outbox_*`` command follows, mostly as real ``manage.py`` processes:
exit statuses, verbosity, console logging without a LOGGING setting, ``--noinput``, clean
one-line errors for an unreachable database or broker, no carriage returns into a pipe."""

from __future__ import annotations

import io
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command, get_commands, load_command_class
from django.db import connection, transaction
from django.utils import timezone

from outbox import publish
from outbox.consumer.registry import registry
from outbox.consumer.topology import topology_for
from outbox.models import OutboxMessage
from outbox.relay.publishers import InMemoryPublisher
from tests.broker import BoundQueue, bound_queue, connect
from tests.operations.conftest import MakeMessage, refreshed
from tests.outages import database_down
from tests.relay.conftest import memory_relay

REPO_ROOT = Path(__file__).resolve().parents[2]
PUBLISHED = OutboxMessage.Status.PUBLISHED
DB_PASSWORD = "cli-test-db-secret"
BROKER_PASSWORD = "cli-test-broker-secret"
OUTBOX_COMMANDS = {
    "outbox_consume",
    "outbox_purge",
    "outbox_purge_inbox",
    "outbox_relay",
    "outbox_replay",
    "outbox_status",
}


def manage(
    *args: str, outbox: dict[str, Any] | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """``manage.py <args>`` on this test's database, as a new project's logging has it."""
    return subprocess.run(
        [sys.executable, "manage.py", *args, "--settings=tests.operations.cli_settings"],
        cwd=REPO_ROOT,
        env=_environment(outbox, env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def start(*args: str, outbox: dict[str, Any] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "manage.py", *args, "--settings=tests.operations.cli_settings"],
        cwd=REPO_ROOT,
        env=_environment(outbox, {}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _environment(outbox: dict[str, Any] | None, env: dict[str, str]) -> dict[str, str]:
    return {
        **os.environ,
        "OUTBOX_DB_NAME": str(connection.settings_dict["NAME"]),
        "OUTBOX_TEST_OVERRIDES": json.dumps(outbox or {}),
        "PYTHONUNBUFFERED": "1",
        **env,
    }


def closed_port() -> int:
    """A local TCP port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def unbound_exchange() -> Iterator[BoundQueue]:
    """A private exchange whose only queue is bound to a key no test message uses."""
    with bound_queue(binding_key="nothing.is.routed.here") as queue:
        yield queue


def publish_rows(exchange: str, *routing_keys: str) -> None:
    with transaction.atomic():
        for key in routing_keys:
            publish(key, {"key": key}, exchange=exchange)


# --- every command ---


def test_every_outbox_command_documents_every_option() -> None:
    commands = {name: app for name, app in get_commands().items() if name.startswith("outbox_")}
    assert set(commands) >= OUTBOX_COMMANDS  # and any command added later is checked too
    for name, app in commands.items():
        parser = load_command_class(app, name).create_parser("manage.py", name)
        undocumented = [
            action.option_strings or action.dest
            for action in parser._actions  # argparse has no public list of its actions
            if not action.help
        ]
        assert undocumented == [], f"{name}: options without help"


# --- outbox_relay --once: exit status, summary, the first unroutable message ---


@pytest.mark.django_db(transaction=True)
def test_relay_once_without_a_bound_queue_exits_6_and_names_the_route(
    unbound_exchange: BoundQueue,
) -> None:
    exchange = unbound_exchange.exchange
    publish_rows(exchange, "orders.placed", "orders.placed", "orders.paid")

    result = manage("outbox_relay", "--once", outbox={"EXCHANGE": exchange})

    assert result.returncode == 6, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    # One ERROR per exchange and routing key, naming both and the command that fixes it.
    assert len(errors) == 2, result.stderr
    for key in ("orders.placed", "orders.paid"):
        [line] = [e for e in errors if f"routing key {key!r}" in e]
        assert f"exchange {exchange!r}" in line
        assert "outbox_consume <consumer> --declare-only" in line
    assert result.stderr.rstrip().endswith(
        "published 0, retried 3, failed 0, released 0: rows were refused by RabbitMQ and wait"
        " for a retry; see the log above and outbox_status"
    )
    assert set(OutboxMessage.objects.values_list("status", "attempts")) == {("ready", 1)}


@pytest.mark.django_db(transaction=True)
def test_relay_once_exits_7_when_rows_used_up_their_attempts(
    unbound_exchange: BoundQueue,
) -> None:
    publish_rows(unbound_exchange.exchange, "orders.placed")

    result = manage(
        "outbox_relay", "--once", outbox={"EXCHANGE": unbound_exchange.exchange, "MAX_ATTEMPTS": 1}
    )

    assert result.returncode == 7, result.stderr
    assert "published 0, retried 0, failed 1, released 0: rows used up their attempts" in (
        result.stderr
    )
    assert OutboxMessage.objects.get().status == OutboxMessage.Status.FAILED


def test_the_first_unroutable_message_of_each_route_is_an_error_once_per_relay(
    caplog: pytest.LogCaptureFixture, transactional_db: None
) -> None:
    relay = memory_relay(InMemoryPublisher(bindings={"events": ["orders.paid"]}))
    caplog.set_level(logging.WARNING, logger="outbox.relay")

    def first_unroutable_lines() -> list[str]:
        lines = [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.ERROR and r.getMessage().startswith("no queue is bound")
        ]
        caplog.clear()
        return lines

    publish_rows("events", "orders.placed")
    relay.publish_batch()
    [first] = first_unroutable_lines()
    assert "exchange 'events' for routing key 'orders.placed'" in first

    publish_rows("events", "orders.placed", "orders.paid")
    relay.publish_batch()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert first_unroutable_lines() == []  # the same route again: WARNING only
    assert any("refused by the broker" in line for line in warnings)

    publish_rows("events", "orders.shipped")
    relay.publish_batch()
    [other] = first_unroutable_lines()
    assert "routing key 'orders.shipped'" in other

    # Another relay (another process) says it again, once per route of what it claims.
    claimed = memory_relay(InMemoryPublisher(bindings={"events": []})).publish_batch().claimed
    again = first_unroutable_lines()
    assert claimed > 0
    assert len(again) == len({line.split(":")[0] for line in again}) == claimed


@pytest.mark.django_db(transaction=True)
def test_relay_once_verbosity(rabbit_queue: BoundQueue) -> None:
    outbox = {"EXCHANGE": rabbit_queue.exchange}
    publish_rows(rabbit_queue.exchange, "orders.placed")
    quiet = manage("outbox_relay", "--once", "-v", "0", outbox=outbox)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")

    publish_rows(rabbit_queue.exchange, "orders.placed")
    normal = manage("outbox_relay", "--once", outbox=outbox)
    assert normal.stdout == "published 1, retried 0, failed 0, released 0\n"
    assert "published 1 message" not in normal.stderr  # no per-batch lines at -v 1

    publish_rows(rabbit_queue.exchange, "orders.placed")
    chatty = manage("outbox_relay", "--once", "-v", "2", outbox=outbox)
    assert chatty.stdout == "published 1, retried 0, failed 0, released 0\n"
    assert "DEBUG outbox.relay] claimed 1 message\n" in chatty.stderr
    assert "INFO outbox.relay] published 1 message\n" in chatty.stderr
    assert len(rabbit_queue.get(3)) == 3


# --- unreachable services: one line naming host:port, never a password or a traceback ---


@pytest.mark.django_db(transaction=True)
def test_an_unreachable_broker_is_one_line_naming_host_and_port() -> None:
    publish_rows("events", "orders.placed")
    port = closed_port()
    url = f"amqp://guest:{BROKER_PASSWORD}@127.0.0.1:{port}/%2F"

    relay = manage("outbox_relay", "--once", outbox={"BROKER_URL": url})
    declare = manage("outbox_consume", "shipping", "--declare-only", outbox={"BROKER_URL": url})

    assert relay.returncode == 5
    assert declare.returncode == 5
    # The relay's own WARNING line comes first; the command's verdict is the last line.
    assert relay.stderr.splitlines()[-1].startswith(
        "CommandError: published 0, retried 0, failed 0, released 1"
    )
    assert f"cannot reach RabbitMQ at 127.0.0.1:{port} (vhost '/')" in relay.stderr
    assert declare.stderr.startswith(
        f"CommandError: cannot connect to RabbitMQ at 127.0.0.1:{port}"
    )
    for result in (relay, declare):
        assert "Traceback" not in result.stderr
        assert BROKER_PASSWORD not in result.stdout + result.stderr
    assert OutboxMessage.objects.get().attempts == 0  # an outage uses up no attempt


@pytest.mark.django_db(transaction=True)
def test_a_relay_without_broker_url_says_so_in_one_line() -> None:
    publish_rows("events", "orders.placed")

    result = manage("outbox_relay", "--once", outbox={"BROKER_URL": None})

    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        'CommandError: settings.OUTBOX["BROKER_URL"] is not set; the relay and consumers need it'
        ' (e.g. "amqp://guest:guest@127.0.0.1:5672/%2F")'
    )
    assert "Traceback" not in result.stderr


@pytest.mark.django_db(transaction=True)
def test_an_unreachable_database_is_one_line_naming_host_and_port() -> None:
    database = str(connection.settings_dict["NAME"])
    commands = [
        ["outbox_relay", "--once"],
        ["outbox_replay", "--all", "--noinput"],
        ["outbox_purge"],
        ["outbox_purge_inbox"],
        ["outbox_status"],
    ]
    with database_down(database):
        results = [manage(*command, OUTBOX_DB_PASSWORD=DB_PASSWORD) for command in commands]
        as_json = manage("outbox_status", "--json", OUTBOX_DB_PASSWORD=DB_PASSWORD)

    for command, result in zip(commands, results, strict=True):
        assert result.returncode == 4, (command, result.stderr)
        assert "Traceback" not in result.stderr, command
        assert f"127.0.0.1:5432 (database '{database}')" in result.stderr, command
        assert "is not currently accepting connections" in result.stderr, command
        assert len(result.stderr.strip().splitlines()) == 1, (command, result.stderr)
        assert DB_PASSWORD not in result.stdout + result.stderr
    assert as_json.returncode == 4
    data = json.loads(as_json.stdout)  # one JSON object, also now
    assert data["healthy"] is False
    assert data["database"] == f"127.0.0.1:5432 (database '{database}')"
    assert "cannot read the outbox" in data["error"]
    assert DB_PASSWORD not in as_json.stdout + as_json.stderr


# --- the long-running commands show what they do, without a LOGGING setting ---


def read_until(stream: Any, text: str, timeout: float = 60) -> str:
    """Lines of ``stream`` until one contains ``text``, end of stream, or ``timeout``."""
    seen = ""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while text not in seen and selector.select(max(0.0, deadline - time.monotonic())):
            line = stream.readline()
            if not line:
                break
            seen += line
    return seen


@pytest.mark.django_db(transaction=True)
def test_the_relay_worker_logs_at_info_on_its_own(rabbit_queue: BoundQueue) -> None:
    worker = start("outbox_relay", outbox={"EXCHANGE": rabbit_queue.exchange})
    try:
        assert worker.stdout is not None
        assert worker.stderr is not None
        assert "running" in worker.stdout.readline()
        started = read_until(worker.stderr, "RabbitMQ at")
        assert "INFO outbox.relay] relay " in started
        assert "from the database at 127.0.0.1:5432" in started
        assert "to RabbitMQ at 127.0.0.1:5672 (vhost '/')" in started
    finally:
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0
    assert "outbox relay stopped" in out


@pytest.mark.django_db(transaction=True)
def test_the_consumer_logs_at_info_on_its_own() -> None:
    exchange = f"test-cli-{os.getpid()}-{time.monotonic_ns()}"
    topology = topology_for(registry.get("shipping"), exchange=exchange)
    try:
        result = manage(
            "outbox_consume", "shipping", "--until-idle", "500ms", OUTBOX_EXCHANGE=exchange
        )
    finally:
        channel = connect().channel()
        retries = [topology.retry_queue(n + 1) for n in range(len(topology.retry_delays_ms))]
        for queue in (topology.queue, topology.dead_letter_queue, *retries):
            channel.queue_delete(queue)
        channel.exchange_delete(exchange)
        channel.connection.close()
    assert result.returncode == 0, result.stderr
    assert f"INFO outbox.consumer] shipping: consuming queue {topology.queue}" in result.stderr
    assert "from RabbitMQ at 127.0.0.1:5672" in result.stderr
    assert result.stdout == "shipping: 0 messages settled\n"


# --- outbox_replay: --noinput, and progress that never writes "\r" into a pipe ---


@pytest.mark.django_db
@pytest.mark.parametrize("flag", ["--noinput", "--no-input", "--yes"])
def test_replay_takes_noinput_and_its_older_spelling(make_message: MakeMessage, flag: str) -> None:
    row = make_message(PUBLISHED)
    call_command("outbox_replay", "--all", flag, stdout=io.StringIO())
    assert refreshed(row).status == OutboxMessage.Status.READY


@pytest.mark.django_db(transaction=True)
def test_replay_progress_in_a_pipe_has_no_carriage_return(make_message: MakeMessage) -> None:
    for _ in range(5):
        make_message(PUBLISHED)

    default = manage("outbox_replay", "--all", "--noinput", "--batch-size", "2")
    for _ in range(5):
        make_message(PUBLISHED)
    OutboxMessage.objects.filter(status="ready").update(status=PUBLISHED)
    chatty = manage("outbox_replay", "--all", "--noinput", "--batch-size", "2", "-v", "2")
    OutboxMessage.objects.filter(status="ready").update(status=PUBLISHED)
    quiet = manage("outbox_replay", "--all", "--noinput", "-v", "0")

    assert default.returncode == chatty.returncode == quiet.returncode == 0
    assert "\r" not in default.stderr + chatty.stderr
    assert default.stderr == ""
    assert default.stdout == "replayed 5 messages keeping their message ids\n"
    assert chatty.stderr.splitlines() == [f"replayed {n}/10" for n in (2, 4, 6, 8, 10)]
    assert (quiet.stdout, quiet.stderr) == ("", "")


# --- durations: one spelling everywhere, the old ones kept ---


@pytest.mark.django_db
def test_purge_inbox_takes_a_duration_and_still_the_days_option() -> None:
    out, err = io.StringIO(), io.StringIO()
    call_command("outbox_purge_inbox", "--older-than", "12h", stdout=out, stderr=err)
    call_command("outbox_purge_inbox", "--older-than-days", "2", stdout=out, stderr=err)
    assert out.getvalue().splitlines() == [
        "deleted 0 inbox records processed more than 12h ago",
        "deleted 0 inbox records processed more than 2d ago",
    ]
    assert err.getvalue() == "--older-than-days is deprecated: write --older-than 2d\n"


def test_a_bad_duration_names_the_syntax() -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "outbox_purge", "--older-than", "a week"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "not a duration: 'a week'; write a duration such as 7d, 12h, 30m, 45s" in result.stderr


# --- outbox_status: unroutable and failed rows, the latest error ---


@pytest.mark.django_db
def test_status_counts_unroutable_and_failed_rows_and_shows_the_latest_error(
    make_message: MakeMessage,
) -> None:
    unroutable = (
        "unroutable: no queue is bound to exchange 'events' for routing key"
        " 'orders.order_placed' (NO_ROUTE)"
    )
    make_message(last_error=unroutable, attempts=1)
    latest = make_message(
        OutboxMessage.Status.FAILED,
        last_error="nack: PRECONDITION_FAILED",
        attempts=10,
        next_attempt_at=timezone.now() + timedelta(minutes=5),
    )
    make_message(PUBLISHED, last_error=unroutable)  # published: not counted

    out = io.StringIO()
    with pytest.raises(SystemExit):
        call_command("outbox_status", "--json", stdout=out)
    data = json.loads(out.getvalue())
    assert (data["unroutable"], data["failed"], data["ready"]) == (1, 1, 1)
    assert data["latest_error"]["message_id"] == str(latest.message_id)
    assert data["latest_error"]["error"] == "nack: PRECONDITION_FAILED"

    text = io.StringIO()
    with pytest.raises(SystemExit):
        call_command("outbox_status", stdout=text)
    lines = dict(line.split("  ", 1) for line in text.getvalue().splitlines())
    assert lines["unroutable (no queue bound)"].strip() == "1"
    assert "nack: PRECONDITION_FAILED" in lines["latest error"]
    assert f"failed orders.order_placed {latest.message_id} (attempt 10)" in lines["latest error"]


@pytest.mark.django_db
def test_status_names_the_declare_command_for_an_unroutable_latest_error(
    make_message: MakeMessage,
) -> None:
    make_message(
        last_error="unroutable: no queue is bound to exchange 'events' for routing key"
        " 'orders.order_placed' (NO_ROUTE)",
        attempts=1,
    )
    out = io.StringIO()
    call_command("outbox_status", stdout=out)
    # The example project's shipping consumer is bound to orders.order_placed.
    assert "declare its queue: python manage.py outbox_consume shipping --declare-only" in (
        out.getvalue()
    )


@pytest.mark.django_db
def test_status_at_verbosity_0_prints_only_problems(make_message: MakeMessage) -> None:
    out, err = io.StringIO(), io.StringIO()
    call_command("outbox_status", "-v", "0", stdout=out, stderr=err)
    assert (out.getvalue(), err.getvalue()) == ("", "")

    make_message(OutboxMessage.Status.FAILED)
    with pytest.raises(SystemExit) as exit:
        call_command("outbox_status", "-v", "0", stdout=out, stderr=err)
    assert exit.value.code == 2
    assert out.getvalue() == ""
    assert err.getvalue() == "unhealthy: 1 failed row (limit 0)\n"
