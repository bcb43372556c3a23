"""The rule for headers a retry or dead-letter copy cannot carry as they were
(``outbox.consumer.fields.sendable_headers``); the broker side is in test_poison.py."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from outbox.consumer.fields import HEADER_FRAME_LIMIT, sendable_headers
from outbox.wire import HEADER_ERROR_MESSAGE, HEADER_REWRITTEN


def test_encodable_headers_are_kept_as_they_are_without_a_note() -> None:
    headers = {
        "a": 1,
        "b": [True, None, b"\x00"],
        "c": {"d": Decimal("1.5")},
        "e": datetime(2026, 1, 1, tzinfo=UTC),
    }
    assert sendable_headers(headers) == headers


def test_a_value_pika_cannot_encode_becomes_its_json_text() -> None:
    sent = sendable_headers({"big": 10**19, "nested": [{"x": 1.5}], "ok": "yes"})
    assert sent["big"] == "10000000000000000000"
    assert sent["nested"] == '[{"x": 1.5}]'
    assert sent["ok"] == "yes"
    assert "'big', 'nested'" in sent[HEADER_REWRITTEN]


def test_the_largest_caller_headers_go_first_and_framework_headers_stay() -> None:
    headers = {
        "small": "s",
        "large": "l" * (HEADER_FRAME_LIMIT // 2),
        "larger": "L" * (HEADER_FRAME_LIMIT // 2 + 10),
        HEADER_ERROR_MESSAGE: "e" * 2000,
    }
    sent = sendable_headers(headers)
    assert "larger" not in sent
    assert (sent["large"], sent["small"]) == (headers["large"], "s")
    assert sent[HEADER_ERROR_MESSAGE] == headers[HEADER_ERROR_MESSAGE]
    assert (
        "1 headers dropped to fit one AMQP frame, largest first: ['larger']"
        in (sent[HEADER_REWRITTEN])
    )
