"""The documentation's examples tagged ``test:examples`` run against the real PostgreSQL.

The tagged Python blocks of one page run in order, in one namespace, inside one test (so a
later block may use what an earlier one defined), with the page's name as their module name:
classes they define keep their stable event and aggregate type names from run to run.
"""

from __future__ import annotations

import sys
import types

import pytest

from tests.docs.markdown import Block, tagged

TAG = "examples"


def pages() -> dict[str, list[Block]]:
    by_page: dict[str, list[Block]] = {}
    for block in tagged(TAG):
        by_page.setdefault(block.page, []).append(block)
    return by_page


def test_the_tag_is_used_and_only_on_python_blocks() -> None:
    found = pages()
    assert {"docs/consumers.md", "docs/event-sourcing.md"} <= set(found)
    assert {block.language for blocks in found.values() for block in blocks} == {"python"}


@pytest.mark.django_db
@pytest.mark.parametrize("page", sorted(pages()))
def test_the_tagged_blocks_of_the_page_run(page: str) -> None:
    name = "docs_" + page.removeprefix("docs/").removesuffix(".md").replace("-", "_")
    # A real module: dataclasses look their class's module up in sys.modules.
    module = types.ModuleType(name)
    sys.modules[name] = module
    try:
        for block in pages()[page]:
            code = compile(block.text, f"{block.where} (test:{TAG})", "exec")
            exec(code, module.__dict__)  # the documentation's own examples
    finally:
        del sys.modules[name]
