"""The fenced code blocks of the documentation, and the rule each of them follows.

Every fenced block in ``README.md`` and ``docs/*.md`` either runs in a test or says it is an
excerpt (the rule is written out in docs/architecture.md, "Code blocks in the docs"):

- **excerpt**: its first line is a comment with the word "excerpt" (``# excerpt: ...``,
  ``-- excerpt``), or the line before its opening fence is ``<!-- excerpt -->``;
- **run with its page**: it is on a page that a test runs whole (``RUN_PAGES``);
- **a copy**: its lines appear, in order and unchanged, inside a block that runs with its
  page (the Celery setup in docs/relay.md is the quickstart's, for instance);
- **tagged**: its info string carries ``test:<name>`` and ``tests/docs/test_<name>.py`` runs
  every block with that tag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# Pages whose every block (but the excerpts) a test runs, in order; page -> the test.
RUN_PAGES = {"docs/quickstart.md": "tests/docs/test_quickstart.py"}

EXCERPT_MARK = "<!-- excerpt -->"

_OPENING = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_EXCERPT_COMMENT = re.compile(r"^\s*(#|--|//)(.*\W)?excerpt\b", re.IGNORECASE)


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its info string and its text (without fences)."""

    page: str  # relative to the repository, e.g. "docs/relay.md"
    line: int  # 1-based line of the opening fence
    info: str
    text: str
    marked_excerpt: bool

    @property
    def language(self) -> str:
        return self.info.split()[0] if self.info.split() else ""

    @property
    def tags(self) -> tuple[str, ...]:
        """The ``test:<name>`` names of the info string."""
        return tuple(
            word.removeprefix("test:") for word in self.info.split() if word.startswith("test:")
        )

    @property
    def first_line(self) -> str:
        return self.text.split("\n", 1)[0]

    @property
    def is_excerpt(self) -> bool:
        return self.marked_excerpt or bool(_EXCERPT_COMMENT.match(self.first_line))

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def documentation_pages() -> list[str]:
    """README.md and every page of docs/, relative to the repository."""
    return ["README.md", *sorted(f"docs/{p.name}" for p in (REPO_ROOT / "docs").glob("*.md"))]


def blocks(page: str) -> list[Block]:
    """The fenced code blocks of ``page`` (relative to the repository), in order."""
    lines = (REPO_ROOT / page).read_text().split("\n")
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _OPENING.match(lines[index])
        if opening is None or (opening["fence"][0] == "`" and "`" in opening["info"]):
            index += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        end = index + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        body = [
            line[indent:] if line[:indent].isspace() else line for line in lines[index + 1 : end]
        ]
        before = [line.strip() for line in lines[:index] if line.strip()]
        found.append(
            Block(
                page=page,
                line=index + 1,
                info=opening["info"].strip(),
                text="\n".join(body),
                marked_excerpt=bool(before) and before[-1] == EXCERPT_MARK,
            )
        )
        index = end + 1
    return found


def tagged(name: str) -> list[Block]:
    """Every block of the documentation whose info string carries ``test:<name>``."""
    return [b for page in documentation_pages() for b in blocks(page) if name in b.tags]


def contains_lines(outer: str, inner: str) -> bool:
    """Whether ``inner``'s lines appear in ``outer`` consecutively, each unchanged."""
    big, small = outer.split("\n"), inner.split("\n")
    return any(big[i : i + len(small)] == small for i in range(len(big) - len(small) + 1))
