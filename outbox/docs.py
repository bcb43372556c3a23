"""The documentation, shipped in the package: ``python -m outbox.docs [page] [--path]``.

The wheel carries the pages of the repository's ``docs/`` folder (as ``outbox/_docs/``, copied
at build time by ``setup.py``), so a system-check hint or an error message can send a user of
the installed package to a page that exists and matches the installed version, offline.
In a source checkout (an editable install) the pages are read from ``docs/`` itself.

Without a page, the command lists the pages; with one (``settings``, ``relay``, ...) it prints
it; ``--path`` prints the file's location instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main", "page_path", "pages", "reference"]

_INSTALLED = Path(__file__).with_name("_docs")
_SOURCE_CHECKOUT = Path(__file__).resolve().parents[1] / "docs"


def pages() -> list[str]:
    """The names of the pages available here, sorted (``settings`` for ``settings.md``)."""
    return sorted(path.stem for path in _pages_dir().glob("*.md"))


def page_path(name: str) -> Path:
    """The file of page ``name``; ``LookupError`` naming the pages if there is none."""
    path = _pages_dir() / f"{name.removesuffix('.md')}.md"
    if not path.is_file():
        raise LookupError(f"no documentation page {name!r}; pages: {', '.join(pages())}")
    return path


def reference(name: str, section: str | None = None) -> str:
    """How a message points to page ``name`` (and a section of it): the command that shows
    it, which works wherever the package is installed."""
    where = f"python -m outbox.docs {name}"
    return where if section is None else f"{where}, section {section!r}"


def main(argv: list[str] | None = None) -> int:
    """The ``python -m outbox.docs`` command; returns its exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m outbox.docs", description="Read the django-transactional-outbox docs."
    )
    parser.add_argument("page", nargs="?", help="page to show; without one, list the pages")
    parser.add_argument("--path", action="store_true", help="print the page's file path")
    arguments = parser.parse_args(argv)
    if arguments.page is None:
        print("\n".join(pages()))
        return 0
    try:
        path = page_path(arguments.page)
    except LookupError as error:
        print(f"python -m outbox.docs: {error}", file=sys.stderr)
        return 2
    if arguments.path:
        print(path)
    else:
        sys.stdout.write(path.read_text(encoding="utf-8"))
    return 0


def _pages_dir() -> Path:
    return _INSTALLED if _INSTALLED.is_dir() else _SOURCE_CHECKOUT


if __name__ == "__main__":
    sys.exit(main())
