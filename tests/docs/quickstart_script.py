"""Turn docs/quickstart.md into one bash script that does what a reader does, in order.

The page's blocks, but the excerpts, become steps:

- a Python block whose first line is ``# <path>`` is that file, whole; with
  ``# <path> (add at the end)`` it is appended to the file;
- a shell block is run in the reader's first terminal (sourced, so ``cd`` and
  ``. .venv/bin/activate`` last); one whose first line is ``# terminal <n>: ...`` is a
  long-running process started in terminal ``n`` (here: in the background, in its own process
  group, stopped when the script ends);
- an ``output`` block right after a shell block is what that command must print: the command
  is run again, once a second, until each of those lines is among its output lines (the
  relay and the consumer take a moment), or the script fails.

``Isolation`` swaps the page's database, exchange and package names for the test's own, so
that parallel runs on one machine never share a database, an exchange or a Redis queue.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from tests.docs.markdown import Block

PAGE = "docs/quickstart.md"

# What the page names, and must keep naming, for the test to swap in its own.
PACKAGE = "django-transactional-outbox[binary,celery]"
DATABASE = "mysite_db"
EXCHANGE = "shop-events"

_FILE_COMMENT = re.compile(r"^# (?P<path>[\w./-]+\.py)(?P<append> \(add at the end\))?$")
_TERMINAL_COMMENT = re.compile(r"^# terminal (?P<number>\d+)\b")

PREAMBLE = r"""
set -eo pipefail
__terminals=()

__start_terminal() {  # number, script: a long-running command in its own process group
  setsid bash "$2" >"$QUICKSTART_LOGS/terminal-$1.log" 2>&1 &
  echo $! >"$QUICKSTART_LOGS/terminal-$1.pid"
  __terminals+=("$1:$!")
}

__check_terminals() {  # every long-running command is still running
  local entry
  for entry in "${__terminals[@]}"; do
    if ! kill -0 "${entry#*:}" 2>/dev/null; then
      echo "quickstart: terminal ${entry%%:*} exited early:" >&2
      tail -n 40 "$QUICKSTART_LOGS/terminal-${entry%%:*}.log" >&2
      return 1
    fi
  done
}

__stop_terminals() {
  local entry pid
  for entry in "${__terminals[@]}"; do kill -TERM -- "-${entry#*:}" 2>/dev/null || true; done
  for entry in "${__terminals[@]}"; do
    pid=${entry#*:}
    for _ in $(seq 150); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
}
trap __stop_terminals EXIT

__has_lines() {  # output, file of expected lines: each expected line is an output line
  local line
  while IFS= read -r line; do
    [ -z "$line" ] && continue
    grep -Fxq -- "$line" <<<"$1" || return 1
  done <"$2"
}

__expect() {  # command file, expected file
  local out=""
  for _ in $(seq 90); do
    if out=$(bash "$1" 2>&1) && __has_lines "$out" "$2"; then
      printf '%s\n' "$out"
      return 0
    fi
    sleep 1
  done
  echo "quickstart: the output never showed the expected lines; last output:" >&2
  printf '%s\n' "$out" >&2
  return 1
}
"""


@dataclass(frozen=True)
class Isolation:
    wheel: Path
    database: str
    exchange: str
    celery_queue: str

    def substitutions(self) -> dict[str, str]:
        return {
            PACKAGE: f"{self.wheel}[binary,celery]",
            DATABASE: self.database,
            EXCHANGE: self.exchange,
        }


class QuickstartError(AssertionError):
    """The page has a block this runner cannot run; the message names its line."""


def build_script(blocks: list[Block], isolation: Isolation, steps: Path) -> str:
    """The bash script of ``blocks`` (the page's, in order); block texts go to ``steps``."""
    page_text = "\n".join(b.text for b in blocks)
    for name in isolation.substitutions():
        if name not in page_text:
            raise QuickstartError(
                f"{PAGE} no longer names {name!r}; tests/docs/quickstart_script.py swaps it"
                " for the test's own, so update the name there"
            )
    steps.mkdir(parents=True, exist_ok=True)
    lines = [PREAMBLE]
    runnable = [b for b in blocks if not b.is_excerpt]
    terminals: set[str] = set()
    settings_isolated = False
    for index, block in enumerate(runnable):
        text = block.text
        for name, replacement in isolation.substitutions().items():
            text = text.replace(name, replacement)
        step = steps / f"{block.line:04d}"
        step.write_text(text + "\n")
        following = runnable[index + 1] if index + 1 < len(runnable) else None
        lines.append(f"echo '== {block.where}'")
        if block.language == "python":
            target = _FILE_COMMENT.match(block.first_line)
            if target is None:
                raise QuickstartError(
                    f"{block.where}: a Python block of the quickstart starts with a comment"
                    " naming its file ('# shop/models.py', or '# mysite/settings.py (add at"
                    " the end)'), or is marked as an excerpt"
                )
            path = shlex.quote(target["path"])
            lines.append(f'mkdir -p "$(dirname {path})"')
            if target["append"]:
                lines.append(f"printf '\\n' >>{path}; cat {shlex.quote(str(step))} >>{path}")
                if target["path"].endswith("settings.py") and not settings_isolated:
                    # A private Celery queue: other runs on the same Redis would take ours.
                    queue = f'CELERY_TASK_DEFAULT_QUEUE = "{isolation.celery_queue}"'
                    lines.append(f"printf '\\n%s\\n' {shlex.quote(queue)} >>{path}")
                    settings_isolated = True
            else:
                lines.append(f"cat {shlex.quote(str(step))} >{path}")
        elif block.language == "sh":
            terminal = _TERMINAL_COMMENT.match(block.first_line)
            if terminal is not None:
                if terminal["number"] in terminals:
                    raise QuickstartError(f"{block.where}: terminal {terminal['number']} twice")
                terminals.add(terminal["number"])
                lines.append(f"__start_terminal {terminal['number']} {shlex.quote(str(step))}")
            elif following is not None and following.language == "output":
                expected = steps / f"{following.line:04d}"
                lines.append(f"__expect {shlex.quote(str(step))} {shlex.quote(str(expected))}")
            else:
                lines.append(f"source {shlex.quote(str(step))}")
            if terminals:
                lines.append("__check_terminals")
        elif block.language == "output":
            previous = runnable[index - 1] if index else None
            if previous is None or previous.language != "sh":
                raise QuickstartError(f"{block.where}: an output block follows a shell block")
        else:
            raise QuickstartError(
                f"{block.where}: the quickstart runner runs python, sh and output blocks;"
                f" this one is {block.info!r} (mark it as an excerpt, or teach the runner)"
            )
    lines.append("__check_terminals")
    lines.append("echo '== quickstart finished'")
    return "\n".join(lines) + "\n"
