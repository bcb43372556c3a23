"""A Debezium Server ``application.properties`` for this project's outbox table.

``manage.py outbox_debezium_config`` prints it, for teams that run Debezium Server (3.6)
next to RabbitMQ instead of the embedded WAL relay. Three parts:

- **source**: the PostgreSQL connector exactly as the embedded WAL relay configures it
  (``outbox.relay.debezium.source_properties``: slot, publication, ``pgoutput``, inserts of
  the outbox table only, no snapshot, offsets in ``outbox_wal_offsets``), under
  ``debezium.source.``;
- **router**: Debezium's outbox event router mapping this project's columns: ``message_id``
  is the event id (header ``id``), ``routing_key`` the record key, ``exchange`` the
  destination, ``payload`` the value; the aggregate, the position, the event type and the
  caller's headers become headers;
- **sink**: Debezium Server's RabbitMQ sink (``debezium.sink.type=rabbitmq``): connection
  from ``BROKER_URL``, the exchange from the destination, the routing key from the record
  key, persistent delivery; keys and values as plain strings and headers as Kafka Connect
  values, so that the body is the payload's JSON text byte for byte and header values keep
  their types.

What this cannot reproduce of the wire format (docs/relay.md, "Choosing a relay") is listed
in ``WIRE_FORMAT_GAPS``; the printed file carries it as comments.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

from outbox import conf, wire
from outbox.relay.debezium import source_properties

__all__ = [
    "BROKER_PASSWORD_PLACEHOLDER",
    "DATABASE_PASSWORD_PLACEHOLDER",
    "HEADER_CALLER_HEADERS",
    "HEADER_EVENT_ID",
    "HEADER_EVENT_TYPE",
    "WIRE_FORMAT_GAPS",
    "application_properties",
    "publication_sql",
    "render",
    "router_properties",
    "sink_properties",
]

#: Environment placeholders Debezium Server (MicroProfile Config) resolves at start-up.
DATABASE_PASSWORD_PLACEHOLDER = "${OUTBOX_DB_PASSWORD}"
BROKER_PASSWORD_PLACEHOLDER = "${OUTBOX_BROKER_PASSWORD}"

#: The router always puts the event id (here the row's ``message_id``) in this header.
HEADER_EVENT_ID = "id"
#: What the AMQP ``type`` property carries on the polling and WAL relays' messages.
HEADER_EVENT_TYPE = "x-outbox-event-type"
#: The caller's headers, as the JSON text of the ``headers`` column (the router cannot spread
#: one column into several headers).
HEADER_CALLER_HEADERS = "x-outbox-headers"

ROUTER_NAME = "outbox"
EXCHANGE_ROUTER_NAME = "exchange"
HEARTBEAT_FILTER_NAME = "heartbeats"
HEARTBEAT_PREDICATE_NAME = "heartbeat"

#: Every difference between what Debezium Server sends and the polling / WAL relays' wire
#: format (../shared/DESIGN.md, "Wire format"); printed as comments and in docs/relay.md.
WIRE_FORMAT_GAPS = (
    "AMQP properties: the RabbitMQ sink sets delivery_mode (2) and headers only: no"
    " message_id, type, content_type or timestamp. The message id is in the header 'id', the"
    f" event type in '{HEADER_EVENT_TYPE}'. outbox_consume dead-letters a message without"
    " message_id ('no message_id property'): consumers of this path read the headers.",
    "caller headers (correlation id, traceparent, x-tenant...) arrive as one header"
    f" '{HEADER_CALLER_HEADERS}' holding their JSON text, not as headers of their own.",
    "a row without an aggregate carries aggregate_type and aggregate_id as empty strings and"
    " an x-outbox-position header; the relays send neither for such a row.",
    "x-outbox-position is always an AMQP 64-bit integer ('l'); pika sends small values as"
    " 32-bit ('I'). Both decode to the same integer.",
    "the exchange is not declared: create it (topic, durable) before Debezium Server starts.",
    "a message no queue is bound for is dropped by RabbitMQ (the sink does not publish"
    " mandatory); the relays record such rows as unroutable and retry them.",
    "nothing marks rows published: they stay 'ready', so outbox_status's backlog figures do"
    " not apply (watch the slot's lag), the polling relay must not run (it would publish"
    " every row again) and outbox_purge deletes nothing; delete old rows with SQL.",
)


def publication_sql(publication: str | None = None) -> str:
    """The SQL that creates the publication the source reads (Debezium's own creation is
    disabled: it would publish updates and deletes too)."""
    from outbox.models import OutboxMessage  # the app registry must be ready first

    name = publication or conf.get_str("WAL_PUBLICATION_NAME")
    return (
        f"CREATE PUBLICATION {name} FOR TABLE {OutboxMessage._meta.db_table}"
        " WITH (publish = 'insert');"
    )


def router_properties() -> dict[str, str]:
    """The outbox event router and its companions, as Kafka Connect transform and predicate
    properties (``transforms``, ``transforms.outbox.*``, ``predicates``...); Debezium Server
    takes them under ``debezium.``."""
    prefix = f"transforms.{ROUTER_NAME}."
    exchange = f"transforms.{EXCHANGE_ROUTER_NAME}."
    placement = [
        f"{wire.AGGREGATE_TYPE_HEADER}:header:{wire.AGGREGATE_TYPE_HEADER}",
        f"{wire.AGGREGATE_ID_HEADER}:header:{wire.AGGREGATE_ID_HEADER}",
        f"position:header:{wire.HEADER_POSITION}",
        f"event_type:header:{HEADER_EVENT_TYPE}",
        f"headers:header:{HEADER_CALLER_HEADERS}",
    ]
    drop = f"transforms.{HEARTBEAT_FILTER_NAME}."
    return {
        "transforms": f"{HEARTBEAT_FILTER_NAME},{ROUTER_NAME},{EXCHANGE_ROUTER_NAME}",
        # The source's heartbeats (which let the slot's position follow the WAL while the
        # outbox is quiet) are records of their own topic: dropped here, or the sink would
        # publish them to an exchange of that name.
        f"{drop}type": "org.apache.kafka.connect.transforms.Filter",
        f"{drop}predicate": HEARTBEAT_PREDICATE_NAME,
        "predicates": HEARTBEAT_PREDICATE_NAME,
        f"predicates.{HEARTBEAT_PREDICATE_NAME}.type": (
            "org.apache.kafka.connect.transforms.predicates.TopicNameMatches"
        ),
        f"predicates.{HEARTBEAT_PREDICATE_NAME}.pattern": "__debezium-heartbeat[.].*",
        f"{prefix}type": "io.debezium.transforms.outbox.EventRouter",
        f"{prefix}table.field.event.id": "message_id",
        f"{prefix}table.field.event.key": "routing_key",
        f"{prefix}table.field.event.payload": "payload",
        # The destination becomes "outbox.event.<exchange>" (the router's default
        # replacement), and the next transform strips the prefix. Writing the replacement
        # here would need "${routedByValue}", which Debezium Server's configuration expands
        # as an expression of its own (twice: escaping it is fragile).
        f"{prefix}route.by.field": "exchange",
        f"{prefix}table.fields.additional.placement": ",".join(placement),
        # The payload stays the JSON text PostgreSQL gives (payload::text, as the relays send).
        f"{prefix}table.expand.json.payload": "false",
        # Updates cannot reach the router (the publication sends inserts only); if one did,
        # stop rather than publish it.
        f"{prefix}table.op.invalid.behavior": "fatal",
        f"{exchange}type": "org.apache.kafka.connect.transforms.RegexRouter",
        f"{exchange}regex": "outbox[.]event[.](.*)",
        f"{exchange}replacement": "$1",
    }


def sink_properties(*, include_secrets: bool = False) -> dict[str, str]:
    """Debezium Server's RabbitMQ sink and formats, from ``OUTBOX["BROKER_URL"]``."""
    url = conf.get("BROKER_URL")
    if not url:
        raise ImproperlyConfigured(
            'settings.OUTBOX["BROKER_URL"] is not set: the RabbitMQ sink has nowhere to connect'
        )
    parts = urlsplit(url)
    secure = parts.scheme == "amqps"
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    connection = "debezium.sink.rabbitmq.connection."
    properties = {
        "debezium.sink.type": "rabbitmq",
        f"{connection}host": parts.hostname or "localhost",
        f"{connection}port": str(parts.port or (5671 if secure else 5672)),
        f"{connection}virtual.host": vhost,
    }
    if parts.username:
        properties[f"{connection}username"] = unquote(parts.username)
    if parts.password:
        properties[f"{connection}password"] = (
            unquote(parts.password) if include_secrets else BROKER_PASSWORD_PLACEHOLDER
        )
    if secure:
        properties[f"{connection}ssl.enabled"] = "true"
    properties.update(
        {
            # Empty: the exchange is the record's destination, the row's exchange column.
            "debezium.sink.rabbitmq.exchange": "",
            "debezium.sink.rabbitmq.routingKey.source": "key",
            "debezium.sink.rabbitmq.deliveryMode": str(wire.PERSISTENT),
            "debezium.sink.rabbitmq.ackTimeout": str(
                round(float(conf.get("CONFIRM_TIMEOUT_SECONDS")) * 1000)
            ),
            # The key (routing key) and value (payload JSON text) as they are; header values
            # as Kafka Connect gives them (strings stay strings, the position a 64-bit int).
            "debezium.format.key": "simplestring",
            "debezium.format.value": "simplestring",
            "debezium.format.header": "connect",
        }
    )
    return properties


def application_properties(
    alias: str = "default",
    *,
    slot: str | None = None,
    publication: str | None = None,
    include_secrets: bool = False,
) -> dict[str, str]:
    """Every property of the Debezium Server configuration, in the order printed."""
    source = source_properties(alias, slot=slot, publication=publication)
    if not include_secrets:
        for key in ("database.password", "offset.storage.jdbc.connection.password"):
            # The JDBC store's "-" stands for "no password"; a real one is a secret.
            if key in source and source[key] != "-":
                source[key] = DATABASE_PASSWORD_PLACEHOLDER
    properties = {f"debezium.source.{key}": value for key, value in source.items()}
    properties.update({f"debezium.{key}": value for key, value in router_properties().items()})
    properties.update(sink_properties(include_secrets=include_secrets))
    return properties


def render(
    alias: str = "default",
    *,
    slot: str | None = None,
    publication: str | None = None,
    include_secrets: bool = False,
) -> str:
    """The ``application.properties`` text, with comments saying what to do first and what
    differs from the relays' wire format."""
    properties = application_properties(
        alias, slot=slot, publication=publication, include_secrets=include_secrets
    )
    name = publication or conf.get_str("WAL_PUBLICATION_NAME")
    lines = [
        "# Debezium Server (3.6) for the django-transactional-outbox table, made by",
        "# `manage.py outbox_debezium_config`. Before the first start:",
        f"#   - PostgreSQL at wal_level = logical, and the publication: {publication_sql(name)}",
        "#   - the exchange declared on RabbitMQ (topic, durable)",
        "#   - the embedded WAL relay and the polling relay stopped: one reader per slot, and",
        "#     rows stay 'ready' here (nothing marks them published)",
    ]
    if not include_secrets:
        lines.append(
            f"#   - {DATABASE_PASSWORD_PLACEHOLDER} and {BROKER_PASSWORD_PLACEHOLDER} in the"
            " environment (if used)"
        )
    lines.append("# Differences from the relays' wire format:")
    lines.extend(_comment(gap) for gap in WIRE_FORMAT_GAPS)
    sections = (
        ("source: the PostgreSQL connector, as the embedded WAL relay runs it", "debezium.source."),
        ("router: this project's outbox columns", "debezium.transforms"),
        ("", "debezium.predicates"),
        ("sink: RabbitMQ, and how keys, values and headers are serialized", ""),
    )
    shown: set[str] = set()
    for title, prefix in sections:
        if title:
            lines += ["", f"# --- {title}"]
        for key, value in properties.items():
            if key not in shown and key.startswith(prefix):
                shown.add(key)
                lines.append(f"{key}={_escaped(value)}")
    return "\n".join(lines) + "\n"


def _comment(text: str) -> str:
    words = text.split()
    lines: list[str] = []
    current = "#   - "
    for word in words:
        if len(current) + len(word) + 1 > 95 and current.strip() not in ("#", "# -", "#   -"):
            lines.append(current.rstrip())
            current = "#     "
        current += word + " "
    lines.append(current.rstrip())
    return "\n".join(lines)


def _escaped(value: str) -> str:
    """``value`` written so that java.util.Properties reads it back as it is."""
    escaped = value.replace("\\", "\\\\")
    if escaped.startswith(" "):
        escaped = "\\" + escaped
    return escaped


def lines_of(text: str) -> Iterable[tuple[str, str]]:
    """The (key, value) pairs of a properties text as :func:`render` writes it (comments and
    blank lines skipped, ``\\`` escapes undone)."""
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _, value = line.partition("=")
        yield key, value.replace("\\\\", "\x00").replace("\\", "").replace("\x00", "\\")
