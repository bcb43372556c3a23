"""The RabbitMQ test helpers themselves work against the real broker."""

import pika

from tests.broker import BoundQueue, connect


def test_bound_queue_receives_what_is_published_to_its_exchange(rabbit_queue: BoundQueue) -> None:
    connection = connect()
    try:
        connection.channel().basic_publish(
            rabbit_queue.exchange,
            "a.b",
            b"{}",
            pika.BasicProperties(message_id="m1"),
        )
    finally:
        connection.close()
    [message] = rabbit_queue.get(1)
    assert (message.body, message.properties.message_id, message.routing_key) == (
        b"{}",
        "m1",
        "a.b",
    )
