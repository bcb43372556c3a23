"""Remove what a docs test made on the shared services: its database, its exchange and its
consumer's queues, its Celery queue on Redis."""

from __future__ import annotations

import pika
import psycopg
import redis

from tests.broker import BROKER_URL

POSTGRES = "host=127.0.0.1 port=5432 user=postgres"
RETRY_DELAYS_MS = (1000, 5000, 25000, 125000)  # the consumer's defaults


def drop_database(name: str) -> None:
    with psycopg.connect(f"{POSTGRES} dbname=postgres", autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def delete_consumer_queues(exchange: str, consumer: str) -> None:
    """The exchange and the queues ``outbox_consume <consumer>`` declares on it."""
    queue = f"{exchange}.{consumer}"
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        channel = connection.channel()
        for name in (queue, f"{queue}.dead", *(f"{queue}.retry.{ms}ms" for ms in RETRY_DELAYS_MS)):
            channel.queue_delete(name)
        channel.exchange_delete(exchange)
    finally:
        connection.close()


def delete_celery_queue(name: str) -> None:
    client = redis.Redis(host="127.0.0.1", port=6379)
    try:
        client.delete(name, f"_kombu.binding.{name}")
    finally:
        client.close()
