"""Timestamps of the relay's and the consumer's steps, for ``bench/end_to_end.py --trace``.

With ``E2E_TRACE`` naming a directory, each process of the benchmark (relay, consumer) wraps
a few methods of the relay loop and the consume loop and writes one line per call to
``<directory>/<pid>.trace``: ``<step> <start> <end> <count>`` (times from ``time.time()``,
so they compare with the writers' commit times). Nothing is wrapped without ``E2E_TRACE``.
"""

from __future__ import annotations

import atexit
import functools
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_lines: list[str] = []
_lock = threading.Lock()


def install() -> None:
    """Wrap the traced methods, if ``E2E_TRACE`` is set."""
    directory = os.environ.get("E2E_TRACE")
    if not directory:
        return
    from outbox.consumer import loop as consumer_loop
    from outbox.relay import listener, loop, postgresql, publishers

    def size(result: Any, args: tuple[Any, ...]) -> int:
        if isinstance(result, list):
            return len(result)
        if isinstance(result, bool):
            return int(result)
        return 0

    _wrap(listener.ReadyListener, "wait", "listen", size)
    _wrap(postgresql.PostgreSQLStore, "claim", "claim", size)
    _wrap(postgresql.PostgreSQLStore, "mark_published", "mark", lambda r, a: int(r))
    _wrap(
        publishers.RabbitMQPublisher,
        "send_batch",
        "send",
        lambda r, a: len(a[1]),
    )
    _wrap(
        publishers.RabbitMQPublisher,
        "collect",
        "collect",
        lambda r, a: len(r.confirmed),
    )
    _wrap(loop.Relay, "_drain", "drain", lambda r, a: r.published)
    _wrap(consumer_loop._Session, "_on_delivery", "deliver", lambda r, a: 1)
    _wrap(consumer_loop.ConsumerLoop, "run_batch", "batch", lambda r, a: len(a[1]))
    _wrap(consumer_loop.ConsumerLoop, "settle", "ack", lambda r, a: len(a[2]))
    path = Path(directory) / f"{os.getpid()}.trace"
    atexit.register(lambda: path.write_text("".join([*_lines, _cpu_line()])))


def _cpu_line() -> str:
    """``cpu-relay`` or ``cpu-consumer``: the process's CPU seconds (all threads) and the
    messages it handled (confirmed by the broker, or processed in batches)."""
    steps = [line.split() for line in _lines]
    confirmed = sum(int(step[3]) for step in steps if step[0] == "collect")
    processed = sum(int(step[3]) for step in steps if step[0] == "batch")
    role, handled = ("relay", confirmed) if confirmed else ("consumer", processed)
    return f"cpu-{role} 0 {time.process_time():.6f} {handled}\n"


def _wrap(owner: type, name: str, step: str, count: Callable[[Any, tuple[Any, ...]], int]) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def traced(*args: Any, **kwargs: Any) -> Any:
        started = time.time()
        result = original(*args, **kwargs)
        line = f"{step} {started:.6f} {time.time():.6f} {count(result, args)}\n"
        with _lock:
            _lines.append(line)
        return result

    setattr(owner, name, traced)
