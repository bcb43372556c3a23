"""docs/concepts.md, "Durable after-commit handlers": its blocks tagged
``test:durable-handlers`` run in order, as one module, against the real PostgreSQL."""

from __future__ import annotations

import sys
import types

import pytest
from django.core import mail

from domain_events.registry import HandlerRegistry
from outbox.models import InboxMessage, OutboxJob
from tests.docs.markdown import tagged

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_page_examples_run_and_send_the_receipt_once(
    handlers: HandlerRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = tagged("durable-handlers")
    assert [block.page for block in blocks] == ["docs/concepts.md"] * 2
    # A module of its own: the handler's dotted name is the module's, as in a project.
    module = types.ModuleType("docs_concepts_durable_handlers")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for block in blocks:
        # dont_inherit: the page's code, without this file's __future__ imports.
        exec(compile(block.text, block.where, "exec", dont_inherit=True), module.__dict__)

    [receipt] = mail.outbox
    assert (receipt.subject, receipt.to) == ("Receipt for invoice 7", ["ann@example.com"])
    assert not OutboxJob.objects.exists()
    assert InboxMessage.objects.get().consumer == (
        "domain_events.handler:docs_concepts_durable_handlers.send_receipt"
    )
