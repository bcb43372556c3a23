"""CPU time of the processes around a benchmark phase: the PostgreSQL backends of one database
and the RabbitMQ node (beam.smp), read from /proc by a separate process so that watching costs
the measured process nothing.

    watch = CpuWatch("outbox_bench")   # starts the watcher
    ...                                # the phase
    seconds = watch.stop()             # {"postgresql": s, "rabbitmq": s}

Backends are found in pg_stat_activity every 50 ms and read until they exit, so a backend
that lives for less than that (or the last 50 ms of one) is missed. RabbitMQ is shared with
whatever else runs on the machine: its figure includes their traffic.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys

TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by process ``pid``, None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def beam_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as comm:
                    if comm.read().strip().startswith("beam"):
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


class CpuWatch:
    """Starts the watcher process at once; ``stop()`` returns the CPU seconds since."""

    def __init__(self, database: str) -> None:
        self._process = subprocess.Popen(
            [sys.executable, __file__, database],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        self._process.stdout.readline()  # "ready": the first readings are taken

    def stop(self) -> dict[str, float]:
        stdout, _ = self._process.communicate("stop\n", timeout=30)
        result: dict[str, float] = json.loads(stdout)
        return result


def _watch(database: str) -> None:
    import psycopg

    admin = psycopg.connect(f"host=127.0.0.1 user=postgres dbname={database}", autocommit=True)
    own = admin.info.backend_pid
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    beams = {pid: process_cpu(pid) or 0.0 for pid in beam_pids()}

    def sample() -> None:
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> %s", [database, own]
        ).fetchall()
        for (pid,) in rows:
            used = process_cpu(pid)
            if used is None:
                continue
            first.setdefault(pid, 0.0)  # started during the watch: all its CPU counts
            last[pid] = used

    # Backends open now count from now; those that start later count from zero.
    for (pid,) in admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> %s", [database, own]
    ).fetchall():
        used = process_cpu(pid)
        if used is not None:
            first[pid] = last[pid] = used
    print("ready", flush=True)
    while not select.select([sys.stdin], [], [], 0.05)[0]:
        sample()
    sample()
    postgresql = sum(last[pid] - first.get(pid, 0.0) for pid in last)
    rabbitmq = sum((process_cpu(pid) or used) - used for pid, used in beams.items())
    print(json.dumps({"postgresql": postgresql, "rabbitmq": rabbitmq}), flush=True)


if __name__ == "__main__":
    _watch(sys.argv[1])
