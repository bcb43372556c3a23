"""Every fenced code block in README.md and docs/*.md runs in a test or says it is an excerpt
(the rule: tests/docs/markdown.py, and docs/architecture.md "Code blocks in the docs")."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs.markdown import (
    EXCERPT_MARK,
    REPO_ROOT,
    RUN_PAGES,
    Block,
    blocks,
    contains_lines,
    documentation_pages,
)


def run_blocks() -> list[Block]:
    """The blocks that run because their page runs whole."""
    return [b for page in RUN_PAGES for b in blocks(page) if not b.is_excerpt]


def unaccounted(block: Block, running: list[Block]) -> str | None:
    """Why ``block`` breaks the rule, or None when it follows it."""
    if block.is_excerpt or block.page in RUN_PAGES:
        return None
    for name in block.tags:
        runner = f"tests/docs/test_{name.replace('-', '_')}.py"
        if not (REPO_ROOT / runner).is_file():
            return f"it is tagged test:{name}, but {runner} does not exist"
    if block.tags:
        return None
    if block.text.strip() and any(contains_lines(r.text, block.text) for r in running):
        return None
    return "neither run by a test nor marked as an excerpt"


def how_to_fix() -> str:
    pages = ", ".join(f"{page} (run by {test})" for page, test in RUN_PAGES.items())
    return (
        "Fix each block, whichever is true of it: an illustration gets a line"
        f" {EXCERPT_MARK} right before its opening fence (or a first line that is a comment"
        " with the word excerpt, e.g. '# excerpt: settings.py'); a block that should run is"
        f" made a verbatim copy of lines of a block that runs ({pages}), or its info string"
        " gets test:<name> and tests/docs/test_<name>.py runs every block with that tag."
        " The rule: docs/architecture.md, 'Code blocks in the docs'."
    )


def test_every_block_runs_or_is_an_excerpt() -> None:
    running = run_blocks()
    problems = [
        f"{block.where}: ```{block.info} block starting {block.first_line[:60]!r}: {reason}"
        for page in documentation_pages()
        for block in blocks(page)
        if (reason := unaccounted(block, running)) is not None
    ]
    assert not problems, "\n".join([*problems, how_to_fix()])


def test_run_pages_exist_with_their_runners() -> None:
    for page, test in RUN_PAGES.items():
        assert (REPO_ROOT / page).is_file(), page
        assert (REPO_ROOT / test).is_file(), test


@pytest.fixture
def page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch page inside the repository root the parser reads, removed afterwards."""
    monkeypatch.setattr("tests.docs.markdown.REPO_ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    return tmp_path / "docs" / "page.md"


def test_parser_finds_blocks_with_their_lines_and_marks(page: Path) -> None:
    page.write_text(
        "# Title\n\n"
        "```python\nprint(1)\n```\n\n"
        "<!-- excerpt -->\n\n"
        "```sh\nls\n```\n\n"
        "````md\n```python\nnested\n```\n````\n\n"
        "  ```python test:quickstart\n  # excerpt: inside a list\n  x = 1\n  ```\n"
    )
    found = blocks("docs/page.md")
    assert [(b.line, b.language, b.is_excerpt) for b in found] == [
        (3, "python", False),
        (9, "sh", True),
        (13, "md", False),
        (19, "python", True),
    ]
    assert found[2].text == "```python\nnested\n```"
    assert found[3].text == "# excerpt: inside a list\nx = 1"
    assert found[3].tags == ("quickstart",)


def test_an_unmarked_block_is_reported_with_its_line_and_the_fix(page: Path) -> None:
    page.write_text("Text\n\n```python\nprint('not run anywhere')\n```\n")
    [block] = blocks("docs/page.md")
    reason = unaccounted(block, running=[])
    assert block.where == "docs/page.md:3"
    assert reason is not None
    assert "excerpt" in reason
    assert EXCERPT_MARK in how_to_fix()
    assert "tests/docs/test_<name>.py" in how_to_fix()


def test_a_copy_of_run_lines_counts_as_run(page: Path) -> None:
    page.write_text("```python\nb = 2\nc = 3\n```\n\n```python\nb = 2\nd = 4\n```\n")
    copy, changed = blocks("docs/page.md")
    running = [Block("docs/quickstart.md", 1, "python", "a = 1\nb = 2\nc = 3", False)]
    assert unaccounted(copy, running) is None
    assert unaccounted(changed, running) is not None


def test_a_tag_needs_its_runner(page: Path) -> None:
    page.write_text("```sh test:no-such-runner\nls\n```\n")
    [block] = blocks("docs/page.md")
    reason = unaccounted(block, running=[])
    assert reason is not None
    assert "tests/docs/test_no_such_runner.py does not exist" in reason
