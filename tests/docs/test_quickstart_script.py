"""How docs/quickstart.md becomes a script, without running it: which block becomes which
step, and the errors that name the line a runner cannot run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs.markdown import Block
from tests.docs.quickstart_script import (
    DATABASE,
    EXCHANGE,
    PACKAGE,
    Isolation,
    QuickstartError,
    build_script,
)

ISOLATION = Isolation(Path("/w/x.whl"), "db_private", "exchange-private", "queue-private")
# Every page names what the test swaps; these blocks carry the names so the others can vary.
NAMES = Block(
    "docs/quickstart.md", 1, "sh", f'pip install "{PACKAGE}"\n# {DATABASE} {EXCHANGE}', False
)


def script(tmp_path: Path, *others: Block) -> str:
    return build_script([NAMES, *others], ISOLATION, tmp_path / "steps")


def block(line: int, info: str, text: str) -> Block:
    return Block("docs/quickstart.md", line, info, text, False)


def test_files_commands_terminals_and_expected_output_become_steps(tmp_path: Path) -> None:
    text = script(
        tmp_path,
        block(10, "python", "# shop/models.py\nx = 1"),
        block(20, "python", "# mysite/settings.py (add at the end)\ny = 2"),
        block(30, "sh", "# terminal 2: the relay\ncelery -A mysite worker --beat"),
        block(40, "sh", "python manage.py shell -c 'print(1)'"),
        block(45, "output", "1"),
        block(50, "sh", "python manage.py migrate"),
    )
    steps = tmp_path / "steps"
    assert f"cat {steps / '0010'} >shop/models.py" in text
    assert f"cat {steps / '0020'} >>mysite/settings.py" in text
    assert 'CELERY_TASK_DEFAULT_QUEUE = "queue-private"' in text
    assert f"__start_terminal 2 {steps / '0030'}" in text
    assert f"__expect {steps / '0040'} {steps / '0045'}" in text
    assert f"source {steps / '0050'}" in text
    assert (
        steps / "0001"
    ).read_text() == 'pip install "/w/x.whl[binary,celery]"\n# db_private exchange-private\n'


def test_excerpts_are_left_out(tmp_path: Path) -> None:
    text = script(tmp_path, block(10, "python", "# excerpt: not a file\nx = 1"))
    assert "docs/quickstart.md:10" not in text


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([block(12, "python", "x = 1")], "docs/quickstart.md:12: a Python block"),
        ([block(13, "toml", "[x]")], "docs/quickstart.md:13: the quickstart runner runs"),
        (
            [block(14, "python", "# a.py\nx = 1"), block(15, "output", "1")],
            "docs/quickstart.md:15: an output block follows",
        ),
    ],
)
def test_a_block_the_runner_cannot_run_is_named(
    tmp_path: Path, bad: list[Block], message: str
) -> None:
    with pytest.raises(QuickstartError, match=message):
        script(tmp_path, *bad)


def test_a_page_that_stops_naming_a_swapped_name_fails(tmp_path: Path) -> None:
    with pytest.raises(QuickstartError, match="no longer names"):
        build_script([block(1, "sh", "pip install x")], ISOLATION, tmp_path / "steps")
