"""scripts/services.sh: starts a service that is down, and fails clearly when it cannot."""

import socket
import subprocess
import time
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
REDIS_START = [
    "redis-server",
    "--daemonize",
    "yes",
    "--bind",
    "127.0.0.1",
    "-::1",
    "--port",
    "6379",
    "--save",
    "",
    "--appendonly",
    "no",
    "--dir",
    "/var/lib/redis",
    "--logfile",
    "/var/log/redis/ci.log",
]


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_a_service_that_cannot_be_started_fails_with_its_name() -> None:
    result = subprocess.run(
        ["bash", "-c", f"source {SCRIPTS}/services.sh; ensure_service Imaginary 59999 false 1"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "Imaginary is down on 127.0.0.1:59999 and could not be started" in result.stderr


@pytest.mark.slow
def test_a_stopped_redis_is_started_again() -> None:
    try:
        subprocess.run(["redis-cli", "-p", "6379", "shutdown", "nosave"], capture_output=True)
        deadline = time.monotonic() + 10
        while port_open(6379) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not port_open(6379), "could not stop Redis for the test"
        result = subprocess.run(
            ["bash", str(SCRIPTS / "services.sh")], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        assert "Redis is up" in result.stderr
        assert port_open(6379)
    finally:
        if not port_open(6379):
            subprocess.run(REDIS_START, capture_output=True)
