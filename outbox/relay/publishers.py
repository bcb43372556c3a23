"""Publishers: the relay's I/O boundary towards the broker.

``RabbitMQPublisher`` sends batches over pika with publisher confirms, pipelined: every
message of a batch is written before any confirm is awaited, the next batch may be written
while the broker still confirms the previous one (``send_batch`` / ``collect``), and confirms
are matched back by delivery tag. ``InMemoryPublisher`` keeps what it is given, for unit
tests of code that publishes. Both answer with the same ``PublishOutcome``; one contract
test suite (tests/relay/test_publisher_contract.py) runs against both.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.channel
import pika.exceptions
import pika.frame
import pika.spec
from pika.adapters.blocking_connection import BlockingChannel
from pika.exchange_type import ExchangeType

from outbox import wire
from outbox.broker import connection_parameters
from outbox.wire import topic_matches

__all__ = [
    "UNROUTABLE_ERROR_PREFIX",
    "InMemoryPublisher",
    "OutgoingMessage",
    "PublishOutcome",
    "Publisher",
    "RabbitMQPublisher",
    "SentBatch",
]

# How the last_error of a row RabbitMQ could not route starts (outbox_status counts them).
UNROUTABLE_ERROR_PREFIX = "unroutable:"


@dataclass(frozen=True)
class OutgoingMessage:
    """One message as it goes on the wire; ``key`` identifies it in the outcome."""

    key: int
    message_id: str
    exchange: str
    routing_key: str
    event_type: str
    body: bytes
    headers: dict[str, Any]
    timestamp: int


@dataclass
class PublishOutcome:
    """What became of each message of a batch, by key.

    ``confirmed``: the broker took responsibility (basic.ack, not returned). ``unroutable``:
    acked but returned (basic.return): no queue was bound for it, so RabbitMQ dropped it.
    ``refused``: the broker answered no (basic.nack, or the exchange could not be declared).
    Reasons are kept per key.
    ``unanswered``: the batch was cut short by ``broker_error`` (connection lost, broker
    unreachable, confirm timeout); those messages may or may not have arrived and are not the
    messages' fault.
    """

    confirmed: list[int] = field(default_factory=list)
    unroutable: dict[int, str] = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)
    unanswered: list[int] = field(default_factory=list)
    broker_error: str | None = None


class SentBatch:
    """A batch handed to ``Publisher.send_batch``; ``Publisher.collect`` gives its outcome."""

    def __init__(self, messages: Sequence[OutgoingMessage]) -> None:
        self.messages = messages


class Publisher(abc.ABC):
    """Sends batches of messages and reports which the broker confirmed.

    Two ways to use one: ``publish_batch`` (send, then wait for the answers), or
    ``send_batch`` followed later by ``collect``, with other batches sent in between: the
    relay writes the next batch while the broker confirms the previous one. Batches are
    collected in the order they were sent.
    """

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> SentBatch:
        """Start publishing ``messages`` in order and return at once; ``collect`` waits for
        the answers. Never raises for broker trouble. This default sends nothing before
        ``collect`` (which calls ``publish_batch``): right for publishers that cannot keep
        several batches in flight."""
        return SentBatch(messages)

    def collect(self, batch: SentBatch, *, confirm_timeout: float) -> PublishOutcome:
        """The outcome of ``batch``, waiting up to ``confirm_timeout`` seconds for it."""
        return self.publish_batch(batch.messages, confirm_timeout=confirm_timeout)

    def answered(self, batch: SentBatch) -> bool:
        """Whether ``collect(batch)`` would return without waiting (every answer is in, or
        the connection failed). This default: always, as ``collect`` sends and waits itself."""
        return True

    def wait(self, seconds: float, woken: threading.Event) -> None:
        """Serve the connection for up to ``seconds`` (heartbeats, the answers of batches in
        flight), returning early once ``woken`` is set (see ``wake``) or a batch in flight
        has all its answers. This default serves heartbeats, then waits for ``woken``."""
        self.keepalive()
        woken.wait(seconds)

    def wake(self) -> None:
        """Have a ``wait`` running in another thread return soon to look at its event; safe
        from any thread. Whoever calls it has set that event first. This default does
        nothing: its ``wait`` watches the event itself."""
        return

    @abc.abstractmethod
    def publish_batch(
        self,
        messages: Sequence[OutgoingMessage],
        *,
        confirm_timeout: float,
        after_send: Callable[[], None] | None = None,
    ) -> PublishOutcome:
        """Send ``messages`` in order and wait up to ``confirm_timeout`` for the answers.

        Never raises for broker trouble: it is reported in the outcome. ``after_send`` runs
        once everything is written and before any confirm is read: the relay claims its next
        batch there, while the broker works on the confirms.
        """

    @abc.abstractmethod
    def keepalive(self) -> None:
        """Serve heartbeats while idle; call it at least every few seconds between batches."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection, if any. The publisher may be used again afterwards."""


class InMemoryPublisher(Publisher):
    """Keeps published messages in ``published``; for unit tests, no broker needed.

    ``bindings`` maps an exchange to topic binding keys (``*`` one word, ``#`` any number):
    a message matching none is refused as unroutable, like RabbitMQ's basic.return.
    ``None`` routes everything. Set ``broker_down`` to simulate an unreachable broker.
    """

    def __init__(self, bindings: dict[str, list[str]] | None = None) -> None:
        self.bindings = bindings
        self.broker_down = False
        self.published: list[OutgoingMessage] = []
        self.batches = 0

    def publish_batch(
        self,
        messages: Sequence[OutgoingMessage],
        *,
        confirm_timeout: float,
        after_send: Callable[[], None] | None = None,
    ) -> PublishOutcome:
        if self.broker_down:
            return PublishOutcome(
                unanswered=[message.key for message in messages],
                broker_error="broker unreachable (InMemoryPublisher.broker_down)",
            )
        self.batches += 1
        outcome = PublishOutcome()
        for message in messages:
            if self._routable(message):
                self.published.append(message)
                outcome.confirmed.append(message.key)
            else:
                outcome.unroutable[message.key] = _unroutable_reason(
                    message.exchange, message.routing_key, "NO_ROUTE"
                )
        if after_send is not None:
            after_send()
        return outcome

    def keepalive(self) -> None:
        pass

    def close(self) -> None:
        pass

    def _routable(self, message: OutgoingMessage) -> bool:
        if self.bindings is None:
            return True
        return any(
            topic_matches(binding, message.routing_key)
            for binding in self.bindings.get(message.exchange, [])
        )


class RabbitMQPublisher(Publisher):
    """Publishes with pipelined publisher confirms over one long-lived pika connection.

    pika's ``BlockingChannel`` waits for each confirm before the next publish when confirm
    mode is on (about 1.3k msg/s here); pipelining needs the channel's asynchronous core,
    reached through ``BlockingChannel._impl``, while the blocking connection still drives the
    socket. The connection is opened on first use and reopened after a failure; exchanges
    are declared (topic, durable) once per connection. A broken connection fails every batch
    still in flight: their unanswered messages are reported as such, never as confirmed.
    """

    # Write buffered frames to the socket (and read the confirms that came back) every this
    # many messages, so a large batch does not pile up in memory before the first byte leaves.
    _FLUSH_EVERY = 200

    def __init__(
        self,
        parameters: pika.connection.Parameters | None = None,
        *,
        client_name: str = "outbox-relay",
    ) -> None:
        self._parameters = parameters
        self._client_name = client_name
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._declared: set[str] = set()
        self._next_tag = 0
        # Across the batches in flight: delivery tag -> (batch, key), oldest first; and
        # message_id -> (batch, key), to match a basic.return.
        self._unconfirmed: OrderedDict[int, tuple[_InFlight, int]] = OrderedDict()
        self._by_message_id: dict[str, tuple[_InFlight, int]] = {}
        self._open: list[_InFlight] = []

    @property
    def connection(self) -> pika.BlockingConnection | None:
        """The open connection, if any (tests use it to check it is reused)."""
        return self._connection

    def publish_batch(
        self,
        messages: Sequence[OutgoingMessage],
        *,
        confirm_timeout: float,
        after_send: Callable[[], None] | None = None,
    ) -> PublishOutcome:
        if not messages:
            return PublishOutcome()
        batch = self.send_batch(messages)
        if after_send is not None and not _broken(batch):
            after_send()
        return self.collect(batch, confirm_timeout=confirm_timeout)

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> SentBatch:
        batch = _InFlight(messages)
        if not messages:
            return batch
        self._open.append(batch)
        try:
            channel = self._open_channel()
            sendable = self._declare_exchanges(messages, batch.outcome)
            core = _core(channel)
            sent = 0
            for message in messages:
                if message.key not in sendable:
                    continue
                properties = _properties(message)
                if isinstance(properties, str):
                    # The row's own content is at fault, not the broker: only it is refused.
                    batch.outcome.refused[message.key] = properties
                    continue
                core.basic_publish(
                    exchange=message.exchange,
                    routing_key=message.routing_key,
                    body=message.body,
                    properties=properties,
                    mandatory=True,
                )
                self._next_tag += 1
                self._unconfirmed[self._next_tag] = (batch, message.key)
                self._by_message_id[message.message_id] = (batch, message.key)
                batch.pending += 1
                sent += 1
                if sent % self._FLUSH_EVERY == 0:
                    self._require_connection().process_data_events(0)
            self._require_connection().process_data_events(0)
        except (pika.exceptions.AMQPError, OSError, _ConfirmTimeoutError) as error:
            self._fail(error)
        return batch

    def collect(self, batch: SentBatch, *, confirm_timeout: float) -> PublishOutcome:
        if not isinstance(batch, _InFlight):
            raise TypeError(f"{batch!r} was not sent by this publisher")
        deadline = time.monotonic() + confirm_timeout
        try:
            while batch.pending and batch.broker_error is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _ConfirmTimeoutError(
                        f"{batch.pending} confirms missing after {confirm_timeout:g}s"
                    )
                connection = self._require_connection()
                connection.process_data_events(remaining)  # type: ignore[arg-type]  # stub: int
        except (pika.exceptions.AMQPError, OSError, _ConfirmTimeoutError) as error:
            self._fail(error)
        return self._finish(batch)

    def keepalive(self) -> None:
        if self._connection is None:
            return
        try:
            self._connection.process_data_events(0)
        except (pika.exceptions.AMQPError, OSError) as error:
            self._fail(error)

    def answered(self, batch: SentBatch) -> bool:
        if not isinstance(batch, _InFlight):
            raise TypeError(f"{batch!r} was not sent by this publisher")
        return not batch.pending or batch.broker_error is not None

    def wait(self, seconds: float, woken: threading.Event) -> None:
        connection = self._connection
        if connection is None:
            woken.wait(seconds)
            return
        if woken.is_set():
            seconds = 0  # still read what arrived, but do not block
        try:
            # Returns early on a batch fully answered (``_answer``) or on ``wake``: both
            # queue a callback on the connection, which ends the wait.
            connection.process_data_events(seconds)  # type: ignore[arg-type]  # stub: int
        except (pika.exceptions.AMQPError, OSError) as error:
            self._fail(error)

    def wake(self) -> None:
        connection = self._connection
        if connection is not None:
            # Closed meanwhile by the publishing thread: its wait is over anyway.
            with contextlib.suppress(pika.exceptions.AMQPError, OSError, AttributeError):
                connection.add_callback_threadsafe(_nothing)

    def close(self) -> None:
        connection, self._connection = self._connection, None
        self._channel = None
        self._declared.clear()
        # Tags of a closed channel are never answered: a batch still waiting for them fails
        # in collect (no connection), its unanswered messages reported as such.
        self._unconfirmed.clear()
        if connection is not None and connection.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                connection.close()

    # -- connection ---------------------------------------------------------------------

    def _open_channel(self) -> BlockingChannel:
        if self._connection is None or not self._connection.is_open:
            self._drop_connection()
            parameters = self._parameters or connection_parameters(client_name=self._client_name)
            self._connection = pika.BlockingConnection(parameters)
            _coalesce_writes(self._connection)
        if self._channel is None or not self._channel.is_open:
            self._channel = self._start_confirming_channel(self._connection)
        return self._channel

    def _start_confirming_channel(self, connection: pika.BlockingConnection) -> BlockingChannel:
        channel = connection.channel()
        selected: list[bool] = []
        _core(channel).confirm_delivery(
            ack_nack_callback=self._on_confirm, callback=lambda frame: selected.append(True)
        )
        _core(channel).add_on_return_callback(self._on_return)
        deadline = time.monotonic() + 10
        while not selected:
            if time.monotonic() > deadline:
                raise _ConfirmTimeoutError("no Confirm.SelectOk from the broker")
            connection.process_data_events(0.05)  # type: ignore[arg-type]  # stub: int
        # Delivery tags count from 1 on each channel; a channel replaced mid-batch (after an
        # exchange declaration failed) leaves no message of the old one unanswered, since
        # declarations happen before a batch's first publish.
        self._next_tag = 0
        return channel

    def _require_connection(self) -> pika.BlockingConnection:
        if self._connection is None:
            raise pika.exceptions.ConnectionWrongStateError("the connection was dropped")
        return self._connection

    def _drop_connection(self) -> None:
        self.close()

    def _fail(self, error: BaseException) -> None:
        """The connection's state is unknown now: every batch in flight is cut short, and the
        next batch starts afresh on a new connection."""
        description = _describe(error)
        for batch in self._open:
            batch.broker_error = batch.broker_error or description
        self._drop_connection()

    def _finish(self, batch: _InFlight) -> PublishOutcome:
        with contextlib.suppress(ValueError):
            self._open.remove(batch)
        for message in batch.messages:
            self._by_message_id.pop(message.message_id, None)
        outcome = batch.outcome
        if batch.broker_error is not None:
            # Returns seen in a batch that a broken connection cut short are not trusted
            # (the broker may have been stopping its queues): like the rest of the batch they
            # are sent again, so an outage never uses up attempts.
            outcome.unroutable.clear()
            answered = set(outcome.confirmed) | set(outcome.refused)
            outcome.unanswered = [
                message.key for message in batch.messages if message.key not in answered
            ]
            outcome.broker_error = batch.broker_error
        return outcome

    # -- publishing ---------------------------------------------------------------------

    def _declare_exchanges(
        self, messages: Sequence[OutgoingMessage], outcome: PublishOutcome
    ) -> set[int]:
        """Declare each new exchange of the batch; refuse the messages of one that fails."""
        sendable = {message.key for message in messages}
        for exchange in sorted({message.exchange for message in messages} - self._declared):
            if exchange == "":  # the default exchange exists and cannot be declared
                continue
            try:
                self._open_channel().exchange_declare(
                    exchange, exchange_type=ExchangeType("topic"), durable=True
                )
                self._declared.add(exchange)
            except pika.exceptions.ChannelClosedByBroker as error:
                # E.g. the exchange exists with another type: only its messages are refused,
                # on a fresh channel the rest of the batch still goes out.
                self._channel = None
                for message in messages:
                    if message.exchange == exchange:
                        sendable.discard(message.key)
                        outcome.refused[message.key] = (
                            f"cannot declare exchange {exchange!r}: {error.reply_code}"
                            f" {error.reply_text}"
                        )
        return sendable

    def _on_confirm(self, frame: pika.frame.Method[Any]) -> None:
        method = frame.method
        assert isinstance(method, pika.spec.Basic.Ack | pika.spec.Basic.Nack)
        tag = method.delivery_tag
        refused = isinstance(method, pika.spec.Basic.Nack)
        if not method.multiple:
            entry = self._unconfirmed.pop(tag, None)
            if entry is not None:
                self._answer(*entry, refused=refused)
            return
        unconfirmed = self._unconfirmed
        while unconfirmed and next(iter(unconfirmed)) <= tag:
            self._answer(*unconfirmed.popitem(last=False)[1], refused=refused)

    def _answer(self, batch: _InFlight, key: int, *, refused: bool) -> None:
        batch.pending -= 1
        if refused:
            batch.outcome.refused[key] = "nacked by the broker"
        elif key in batch.returned:
            batch.outcome.unroutable[key] = batch.returned.pop(key)
        else:
            batch.outcome.confirmed.append(key)
        if not batch.pending and self._connection is not None:
            # Impl-level callbacks do not end process_data_events' wait; a no-op callback
            # queued on the connection does, so the batch's last confirm is not waited out.
            self._connection.add_callback_threadsafe(_nothing)

    def _on_return(
        self,
        channel: Any,
        method: pika.spec.Basic.Return,
        properties: pika.spec.BasicProperties,
        body: bytes,
    ) -> None:
        # RabbitMQ sends basic.return before the basic.ack of the same message.
        entry = self._by_message_id.get(properties.message_id or "")
        if entry is not None:
            batch, key = entry
            batch.returned[key] = _unroutable_reason(
                method.exchange or "", method.routing_key or "", method.reply_text or ""
            )


class _InFlight(SentBatch):
    """A batch written to the channel: what the broker answered so far."""

    def __init__(self, messages: Sequence[OutgoingMessage]) -> None:
        super().__init__(messages)
        self.outcome = PublishOutcome()
        self.returned: dict[int, str] = {}
        self.pending = 0  # messages sent and not answered yet
        self.broker_error: str | None = None


def _broken(batch: SentBatch) -> bool:
    return isinstance(batch, _InFlight) and batch.broker_error is not None


def _properties(message: OutgoingMessage) -> pika.BasicProperties | str:
    """The AMQP properties of ``message``, or why they cannot be encoded.

    They are encoded once here, before a byte of the message is written: a header value AMQP
    cannot carry (a float, an integer beyond 64 bits, a key over 255 bytes, from a row written
    around ``publish()``'s checks) would otherwise fail inside pika half-way through a batch
    and look like a broker outage, stalling every row behind it. The usual message (text,
    integer, boolean and empty header values) is encoded by ``_encode_properties``; anything
    else by pika.
    """
    try:
        encoded = _encode_properties(message)
    except ValueError:  # text that is not UTF-8 encodable: pika says why below
        encoded = None
    if encoded is not None:
        fast = _EncodedProperties.__new__(_EncodedProperties)
        fast.encoded = [encoded]
        return fast
    properties = _EncodedProperties(
        message_id=message.message_id,
        type=message.event_type,
        content_type=wire.CONTENT_TYPE,
        delivery_mode=wire.PERSISTENT,
        timestamp=message.timestamp,
        headers=message.headers,
    )
    try:
        properties.encoded = pika.BasicProperties.encode(properties)
    except (pika.exceptions.AMQPError, struct.error, OverflowError, TypeError, ValueError) as error:
        return f"cannot be encoded as AMQP properties: {_describe(error)}"
    return properties


# The properties the relay sets, as pika's BasicProperties.encode writes them: the flags of
# content_type, headers, delivery_mode, message_id, timestamp and type, then those fields in
# that order. tests/relay/test_properties_encoding.py compares with pika's encoder.
_PROPERTY_FLAGS = struct.pack(
    ">H",
    pika.BasicProperties.FLAG_CONTENT_TYPE
    | pika.BasicProperties.FLAG_HEADERS
    | pika.BasicProperties.FLAG_DELIVERY_MODE
    | pika.BasicProperties.FLAG_MESSAGE_ID
    | pika.BasicProperties.FLAG_TIMESTAMP
    | pika.BasicProperties.FLAG_TYPE,
)
_CONTENT_TYPE = bytes([len(wire.CONTENT_TYPE)]) + wire.CONTENT_TYPE.encode()
_DELIVERY_MODE = struct.pack("B", wire.PERSISTENT)
_LONG_STRING = struct.Struct(">cI").pack
_INT32 = struct.Struct(">ci").pack
_INT64 = struct.Struct(">cq").pack
_UINT32 = struct.Struct(">I").pack
_UINT64 = struct.Struct(">Q").pack


def _encode_properties(message: OutgoingMessage) -> bytes | None:
    """The encoded properties of ``message`` (what pika would write), or None when a value
    is not one this encoder handles (pika then encodes it, or says why it cannot)."""
    table = _encode_table(message.headers)
    message_id = message.message_id.encode()
    event_type = message.event_type.encode()
    if table is None or len(message_id) > 255 or len(event_type) > 255:
        return None
    if not 0 <= message.timestamp < 2**64:
        return None
    return b"".join(
        (
            _PROPERTY_FLAGS,
            _CONTENT_TYPE,
            table,
            _DELIVERY_MODE,
            bytes([len(message_id)]),
            message_id,
            _UINT64(message.timestamp),
            bytes([len(event_type)]),
            event_type,
        )
    )


def _encode_table(headers: dict[str, Any]) -> bytes | None:
    """An AMQP field table of text, integer, boolean and None values, as pika encodes it
    (text ``S``, booleans ``t``, integers ``I`` or, beyond 32 bits, ``l``, None ``V``)."""
    pieces: list[bytes] = []
    for key, value in headers.items():
        if type(key) is not str:
            return None
        name = key.encode()
        if len(name) > 255:
            return None
        pieces.append(bytes([len(name)]))
        pieces.append(name)
        kind = type(value)
        if kind is str:
            text = value.encode()
            pieces.append(_LONG_STRING(b"S", len(text)))
            pieces.append(text)
        elif kind is int:
            if -(2**31) <= value < 2**31:
                pieces.append(_INT32(b"I", value))
            elif -(2**63) <= value < 2**63:
                pieces.append(_INT64(b"l", value))
            else:
                return None
        elif kind is bool:
            pieces.append(b"t\x01" if value else b"t\x00")
        elif value is None:
            pieces.append(b"V")
        else:
            return None
    body = b"".join(pieces)
    return _UINT32(len(body)) + body


class _EncodedProperties(pika.BasicProperties):
    """Properties that keep the encoding made when they were checked: pika encodes the
    header frame by calling ``encode()``, which then costs nothing the second time (encoding
    the headers table is the largest part of pika's work per message)."""

    encoded: list[bytes]

    def encode(self) -> list[bytes]:
        return self.encoded


class _CoalescedWrites(collections.deque[bytes | bytearray]):
    """pika's write buffer of one connection, where frames written one after the other are
    joined into one chunk (up to ``_CHUNK_BYTES``).

    pika buffers each frame it marshals (a method, a header and a body frame per message)
    and sends every buffer with a ``send`` call of its own: three system calls per message,
    about a third of the publishing thread's time over a backlog. Joined, a batch leaves in
    a few calls, and the broker reads fewer, larger segments. pika only appends at the
    tail, sends from the head and puts a partly sent remainder back at the head, all on the
    connection's thread, so extending the tail keeps the bytes in order.
    """

    _CHUNK_BYTES = 128 * 1024

    def append(self, data: bytes | bytearray) -> None:
        if self:
            tail = self[-1]
            if len(tail) + len(data) <= self._CHUNK_BYTES:
                if isinstance(tail, bytearray):
                    tail += data
                else:
                    self[-1] = bytearray(tail) + data
                return
        super().append(data)


def _coalesce_writes(connection: pika.BlockingConnection) -> None:
    """Give ``connection``'s transport a ``_CoalescedWrites`` buffer (pika's private
    ``_tx_buffers``; tests/packaging/test_pika_private_api.py pins that surface). Left as it
    is when this pika does not have it: the writes are then only slower."""
    transport = getattr(getattr(connection, "_impl", None), "_transport", None)
    buffers = getattr(transport, "_tx_buffers", None)
    if isinstance(buffers, collections.deque) and not isinstance(buffers, _CoalescedWrites):
        coalesced = _CoalescedWrites()
        for chunk in buffers:
            coalesced.append(chunk)
        transport._tx_buffers = coalesced  # type: ignore[union-attr]


def _core(channel: BlockingChannel) -> pika.channel.Channel:
    """The asynchronous channel under a ``BlockingChannel``: the one that can publish in
    confirm mode without waiting for each confirm (pika has no public way to do that)."""
    core: pika.channel.Channel = getattr(channel, "_impl")  # noqa: B009
    return core


class _ConfirmTimeoutError(Exception):
    pass


def _nothing() -> None:
    pass


def _unroutable_reason(exchange: str, routing_key: str, reply_text: str) -> str:
    return (
        f"{UNROUTABLE_ERROR_PREFIX} no queue is bound to exchange {exchange!r} for routing key"
        f" {routing_key!r} ({reply_text})"
    )


def _describe(error: BaseException) -> str:
    text = str(error) or repr(error)
    return f"{type(error).__name__}: {text}"
