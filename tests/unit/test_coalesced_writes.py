"""The relay's write buffer joins pika's frames and keeps the bytes in order."""

from __future__ import annotations

from outbox.relay.publishers import _CoalescedWrites


def drain(buffers: _CoalescedWrites, send_at_most: int) -> bytes:
    """What pika's ``_produce`` does: send from the head, put a partial remainder back."""
    sent = b""
    while buffers:
        chunk = buffers[0]
        taken = bytes(chunk[:send_at_most])
        buffers.popleft()
        if len(taken) < len(chunk):
            buffers.appendleft(chunk[len(taken) :])
        sent += taken
        if len(taken) == send_at_most:
            break  # the socket is full: pika waits for it to be writable again
    return sent


def test_frames_are_joined_into_chunks_and_sent_in_order() -> None:
    buffers = _CoalescedWrites()
    frames = [bytes([n % 251]) * (n % 97 + 1) for n in range(3000)]
    for frame in frames[:1500]:
        buffers.append(frame)
    assert len(buffers) < 10, "thousands of frames, a few chunks"
    sent = drain(buffers, 50_000)  # a partial send: a remainder goes back to the head
    for frame in frames[1500:]:
        buffers.append(frame)  # appended behind the remainder
    while buffers:
        sent += drain(buffers, 50_000)
    assert sent == b"".join(frames)


def test_a_chunk_never_grows_past_its_limit() -> None:
    buffers = _CoalescedWrites()
    for _ in range(100):
        buffers.append(b"x" * 10_000)
    assert all(len(chunk) <= _CoalescedWrites._CHUNK_BYTES for chunk in buffers)
    assert sum(len(chunk) for chunk in buffers) == 1_000_000
