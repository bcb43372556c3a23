"""The README's two commands (the block tagged ``test:readme-commands``): the example runs
end to end through a real Celery worker, and the test command is what CI runs."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tests.docs.cleanup import delete_celery_queue, delete_consumer_queues, drop_database
from tests.docs.markdown import REPO_ROOT, tagged

pytestmark = pytest.mark.slow

EXAMPLE = "bash scripts/example.sh"
TEST = "bash scripts/test.sh"


def commands() -> list[str]:
    """The commands of the tagged README block, without their comments."""
    [block] = tagged("readme-commands")
    assert block.page == "README.md"
    return [line.split("#", 1)[0].strip() for line in block.text.splitlines() if line.strip()]


def test_the_block_holds_exactly_the_two_commands() -> None:
    assert commands() == [EXAMPLE, TEST]


def test_ci_runs_the_test_command() -> None:
    # The test command is the whole suite, this test included: CI is what runs it.
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert re.search(rf"^exec {re.escape(TEST)}$", ci, re.MULTILINE), ci


@pytest.fixture
def private_example() -> Iterator[dict[str, str]]:
    """The example's environment variables for a database, exchange, Celery queue and port
    of this run only; the first three are removed afterwards."""
    token = uuid.uuid4().hex[:8]
    base = os.environ.get("OUTBOX_DB_NAME", "outbox_example")
    names = {
        "OUTBOX_DB_NAME": f"test_{base}_example_script",
        "OUTBOX_EXCHANGE": f"example-{token}",
        "CELERY_TASK_DEFAULT_QUEUE": f"example-{token}",
    }
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    drop_database(names["OUTBOX_DB_NAME"])
    try:
        yield {**names, "EXAMPLE_PORT": str(port)}
    finally:
        drop_database(names["OUTBOX_DB_NAME"])
        delete_consumer_queues(names["OUTBOX_EXCHANGE"], "shipping")
        delete_celery_queue(names["CELERY_TASK_DEFAULT_QUEUE"])


def test_the_example_command_runs_the_shop_through_a_celery_worker(
    private_example: dict[str, str],
) -> None:
    assert EXAMPLE in commands()
    environment = {
        name: value for name, value in os.environ.items() if name != "DJANGO_SETTINGS_MODULE"
    }
    run = subprocess.run(
        EXAMPLE.split(),
        cwd=REPO_ROOT,
        env={**environment, **private_example},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, f"{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    assert "example finished" in run.stdout
    assert "1 shipment, 1 inbox record" in run.stdout
    # Both publications, the first and the one after the simulated crash, were Celery runs.
    published = re.findall(
        r"Task outbox\.tasks\.publish_outbox\[[^\]]+\] succeeded in \S+: 1\b", run.stdout
    )
    assert len(published) >= 2, run.stdout[-4000:]
