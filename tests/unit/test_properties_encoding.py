"""The relay's own encoder of AMQP properties writes exactly what pika's would."""

from __future__ import annotations

from typing import Any

import pika
import pytest

from outbox import wire
from outbox.relay.publishers import OutgoingMessage, _encode_properties, _properties


def message(headers: dict[str, Any], **changes: Any) -> OutgoingMessage:
    fields: dict[str, Any] = {
        "key": 1,
        "message_id": "2f0c3a6e-1d2b-4c55-9a43-5d7f3b1e9c10",
        "exchange": "events",
        "routing_key": "orders.placed",
        "event_type": "orders.placed",
        "body": b"{}",
        "headers": headers,
        "timestamp": 1_764_800_000,
        **changes,
    }
    return OutgoingMessage(**fields)


def pikas(outgoing: OutgoingMessage) -> bytes:
    return b"".join(
        pika.BasicProperties(
            message_id=outgoing.message_id,
            type=outgoing.event_type,
            content_type=wire.CONTENT_TYPE,
            delivery_mode=wire.PERSISTENT,
            timestamp=outgoing.timestamp,
            headers=outgoing.headers,
        ).encode()
    )


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"aggregate_type": "order", "aggregate_id": "42", "x-outbox-position": 7},
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        {"é-clé": "ünïcode ✓", "empty": "", "none": None, "yes": True, "no": False},
        {"small": -(2**31), "edge": 2**31 - 1, "big": 2**31, "huge": -(2**63), "top": 2**63 - 1},
        {"k" * 255: "v" * 1000},
    ],
)
def test_the_encoding_is_pikas(headers: dict[str, Any]) -> None:
    outgoing = message(headers, event_type="orders.placed.ünï", message_id="id-" + "x" * 200)
    assert _encode_properties(outgoing) == pikas(outgoing)
    properties = _properties(outgoing)
    assert isinstance(properties, pika.BasicProperties)
    assert b"".join(properties.encode()) == pikas(outgoing)


@pytest.mark.parametrize(
    "headers",
    [{"nested": {"a": 1}}, {"list": [1, "a"]}, {"bytes": b"x"}, {"float": 1.5}],
)
def test_other_values_are_left_to_pika(headers: dict[str, Any]) -> None:
    outgoing = message(headers)
    assert _encode_properties(outgoing) is None
    properties = _properties(outgoing)
    if isinstance(properties, pika.BasicProperties):
        assert b"".join(properties.encode()) == pikas(outgoing)


@pytest.mark.parametrize(
    "headers",
    [{"k" * 256: "v"}, {"beyond": 2**64}, {"bad": "\ud800"}],
)
def test_what_amqp_cannot_carry_is_refused_not_raised(headers: dict[str, Any]) -> None:
    assert isinstance(_properties(message(headers)), str)
