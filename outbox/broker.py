"""Connection settings for RabbitMQ, shared by the relay and the consumers."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import pika
from django.core.exceptions import ImproperlyConfigured

from outbox import conf


def connection_parameters(*, client_name: str) -> pika.URLParameters:
    """pika parameters for ``OUTBOX["BROKER_URL"]``, naming the connection ``client_name`` so
    it can be told apart in the RabbitMQ management UI and ``rabbitmqctl list_connections``."""
    url = conf.get_optional_str("BROKER_URL")
    if not url:
        raise ImproperlyConfigured(
            'settings.OUTBOX["BROKER_URL"] is not set; the relay and consumers need it'
            ' (e.g. "amqp://guest:guest@127.0.0.1:5672/%2F")'
        )
    try:
        parameters = pika.URLParameters(url)
    except Exception as error:
        raise ImproperlyConfigured(
            f'settings.OUTBOX["BROKER_URL"] is not a valid AMQP URL: {error}'
        ) from error
    parameters.client_properties = {"connection_name": client_name}
    return parameters


def broker_address() -> str:
    """``host:port`` and virtual host of ``OUTBOX["BROKER_URL"]``, for messages; never the
    user or password."""
    url = conf.get_optional_str("BROKER_URL")
    if not url:
        return "(no BROKER_URL)"
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    port = port or (5671 if parts.scheme == "amqps" else 5672)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return f"{parts.hostname}:{port} (vhost {vhost!r})"
