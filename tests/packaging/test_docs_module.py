"""Messages that send users to the docs name pages (and sections) that exist, and
``python -m outbox.docs`` shows them. tests/packaging/test_wheel.py checks the same in an
installed wheel."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import outbox
from outbox import docs

OUTBOX_SOURCE = Path(outbox.__file__).parent
# reference("page") or reference("page", "Section"), as the hints call it.
REFERENCE = re.compile(r"""reference\(\s*["']([\w-]+)["'](?:\s*,\s*["']([^"']+)["'])?\s*\)""")


def references_in(source: Path) -> set[tuple[str, str | None]]:
    """Every (page, section) that the outbox package's code points users to."""
    found = set()
    for module in source.rglob("*.py"):
        for page, section in REFERENCE.findall(module.read_text(encoding="utf-8")):
            found.add((page, section or None))
    return found


def test_the_check_hints_point_to_pages_and_sections_that_exist() -> None:
    references = references_in(OUTBOX_SOURCE)
    assert ("concepts", "Databases other than PostgreSQL") in references  # outbox.W002
    assert ("settings", "Relay") in references  # outbox.E004
    for page, section in references:
        text = docs.page_path(page).read_text(encoding="utf-8")
        if section is not None:
            assert f"\n## {section}\n" in text, (page, section)


def test_python_m_outbox_docs_lists_prints_and_locates_pages() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "outbox.docs", *args], capture_output=True, text=True
        )

    assert "settings" in run().stdout.split()
    assert run("settings").stdout.startswith("# Settings reference\n")
    assert Path(run("--path", "settings").stdout.strip()).is_file()
    missing = run("no-such-page")
    assert missing.returncode == 2
    assert "pages: architecture, concepts" in missing.stderr


def test_an_unknown_page_names_the_pages() -> None:
    with pytest.raises(LookupError, match=r"no documentation page .nope.; pages: .*settings"):
        docs.page_path("nope")
