"""The example bank: an event-sourced account whose withdrawals reach the outbox."""

from __future__ import annotations

import re
from decimal import Decimal
from io import StringIO

import pytest
from django.core import mail
from django.core.management import call_command
from django.db import transaction

from domain_events import EventStore
from domain_events.models import StoredEvent
from example_project.bank.accounts import Account, OverdraftError
from example_project.bank.models import AccountBalance
from outbox.jobs import run_due_jobs
from outbox.models import OutboxJob, OutboxMessage

pytestmark = pytest.mark.django_db

store = EventStore()


def opened_with(amount: str) -> Account:
    account = Account.open("ann")
    account.deposit(Decimal(amount))
    with transaction.atomic():
        store.save(account)
    return account


def test_a_withdrawal_is_stored_with_its_balance_and_outbox_message() -> None:
    account = opened_with("10.00")
    account.withdraw(Decimal("4.00"))
    with transaction.atomic():
        store.save(account, triggering_message_id="req-1")

    assert store.get(Account, account.id).balance == Decimal("6.00")
    assert AccountBalance.objects.get(account_id=account.id).balance == Decimal("6.00")
    # The stored events are published: one outbox row each, in version order.
    messages = list(OutboxMessage.objects.order_by("id"))
    assert [m.event_type for m in messages] == [
        "bank.AccountOpened",
        "bank.MoneyDeposited",
        "bank.MoneyWithdrawn",
    ]
    message = messages[-1]
    assert message.routing_key == "bank.MoneyWithdrawn"
    assert message.ordering_key == f"bank.account:{account.id}"
    assert message.headers["aggregate_version"] == 3
    assert message.payload == {
        "account_id": account.id,
        "amount": "4.00",
        "balance_after": "6.00",
    }


def test_an_overdraft_is_refused_and_records_nothing() -> None:
    account = opened_with("5.00")
    with pytest.raises(OverdraftError, match=re.escape("holds 5.00; cannot withdraw 5.01")):
        account.withdraw(Decimal("5.01"))
    assert account.pending_events == ()
    assert account.balance == Decimal("5.00")
    assert StoredEvent.objects.filter(aggregate_id=account.id).count() == 2
    assert OutboxMessage.objects.count() == 2  # the opening's two events, nothing more


def test_bad_amounts_are_refused_at_the_call() -> None:
    account = opened_with("1")
    for amount in (Decimal(0), Decimal(-1), 3):
        with pytest.raises(ValueError, match="positive Decimal"):
            account.deposit(amount)  # type: ignore[arg-type]
    assert account.pending_events == ()


def test_the_demo_command_tells_the_story() -> None:
    out = StringIO()
    call_command("bank_demo", "--owner", "zoe", stdout=out)
    text = out.getvalue()
    assert "re-delivered message refused" in text
    assert "overdraft refused" in text
    assert "balance from 3 stored events: 70.00; read model: 70.00" in text
    assert text.count("outbox: bank.AccountOpened") == 1
    assert text.count("outbox: bank.MoneyDeposited") == 1
    assert text.count("outbox: bank.MoneyWithdrawn") == 1
    assert "after-commit jobs (the receipt e-mail): done 1, skipped 0" in text
    [receipt] = mail.outbox
    assert receipt.to == ["zoe@example.com"]
    assert receipt.subject == "Withdrawal of 30.00"


def test_the_receipt_is_a_durable_job_written_with_the_withdrawal() -> None:
    account = opened_with("10.00")
    assert not OutboxJob.objects.exists()  # no receipt for a deposit
    account.withdraw(Decimal("4.00"))
    with transaction.atomic():
        store.save(account)
    job = OutboxJob.objects.get()
    assert job.name == "example_project.bank.handlers.email_withdrawal_receipt"
    assert not mail.outbox  # nothing is sent before the job runner runs it

    assert run_due_jobs().done == 1
    assert mail.outbox[0].body == "4.00 was withdrawn; the balance is now 6.00."
