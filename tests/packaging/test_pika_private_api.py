"""The publisher drives pika's asynchronous channel under a ``BlockingChannel`` (pika has no
public way to publish in confirm mode without waiting per message). This test fails when a pika
release changes that private surface, so the ``pika<2`` pin is revisited knowingly."""

from __future__ import annotations

import inspect
from importlib.metadata import version

import pika
import pika.channel
from pika.adapters.blocking_connection import BlockingChannel

from tests.broker import connect


def test_blocking_channel_exposes_its_async_channel_as_impl() -> None:
    connection = connect()
    try:
        channel = connection.channel()
        core = getattr(channel, "_impl")  # noqa: B009 - the private attribute under test
        assert isinstance(channel, BlockingChannel)
        assert isinstance(core, pika.channel.Channel)
    finally:
        connection.close()


def test_async_channel_methods_keep_the_signatures_the_publisher_calls() -> None:
    confirm = inspect.signature(pika.channel.Channel.confirm_delivery).parameters
    assert {"ack_nack_callback", "callback"} <= set(confirm)
    publish = inspect.signature(pika.channel.Channel.basic_publish).parameters
    assert {"exchange", "routing_key", "body", "properties", "mandatory"} <= set(publish)
    on_return = inspect.signature(pika.channel.Channel.add_on_return_callback).parameters
    assert "callback" in on_return


def test_installed_pika_is_within_the_pinned_major_version() -> None:
    assert version("pika").split(".")[0] == "1"


def test_the_transport_keeps_a_deque_write_buffer_the_publisher_can_replace() -> None:
    from outbox.relay.publishers import _coalesce_writes, _CoalescedWrites

    connection = connect()
    try:
        transport = getattr(connection, "_impl")._transport  # noqa: B009 - under test
        assert type(transport._tx_buffers).__name__ == "deque"
        _coalesce_writes(connection)
        assert isinstance(transport._tx_buffers, _CoalescedWrites)
        # The connection still works through the replaced buffer.
        channel = connection.channel()
        channel.queue_declare("", exclusive=True)
    finally:
        connection.close()
