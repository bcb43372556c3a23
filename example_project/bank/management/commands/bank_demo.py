"""``manage.py bank_demo``: an event-sourced account from opening to a refused overdraft."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

from domain_events import DuplicateCommandError, EventStore
from domain_events.models import StoredEvent
from example_project.bank.accounts import Account, OverdraftError
from example_project.bank.models import AccountBalance
from outbox.jobs import run_due_jobs
from outbox.models import OutboxMessage


class Command(BaseCommand):
    help = "Open an account, deposit, withdraw, try an overdraft and a re-delivered command."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--owner", default="alice")

    def handle(self, *args: Any, **options: Any) -> None:
        store = EventStore()
        account = Account.open(options["owner"])
        account.deposit(Decimal("100.00"))
        with transaction.atomic():
            store.save(account, triggering_message_id=f"open-{account.id}")
        self.stdout.write(f"opened {account.id} for {account.owner} with 100.00")

        def withdraw(amount: str, message_id: str) -> None:
            with transaction.atomic():
                current = store.get(Account, account.id)
                current.withdraw(Decimal(amount))
                store.save(current, triggering_message_id=message_id)
            self.stdout.write(f"withdrew {amount} (message {message_id})")

        withdraw("30.00", "withdraw-1")
        try:
            withdraw("30.00", "withdraw-1")
        except DuplicateCommandError as error:
            self.stdout.write(f"re-delivered message refused: {error}")
        try:
            withdraw("500.00", "withdraw-2")
        except OverdraftError as error:
            self.stdout.write(f"overdraft refused: {error}")

        loaded = store.get(Account, account.id)
        read_model = AccountBalance.objects.get(account_id=account.id)
        events = StoredEvent.objects.filter(aggregate_id=account.id).count()
        messages = OutboxMessage.objects.filter(ordering_key=f"bank.account:{account.id}")
        self.stdout.write(
            f"balance from {events} stored events: {loaded.balance};"
            f" read model: {read_model.balance}"
        )
        for message in messages:
            self.stdout.write(f"outbox: {message.event_type} {message.payload}")
        # The receipt is a durable after-commit handler: a local job that outbox_jobs or the
        # run_jobs Celery task runs; run here so the demo shows it.
        self.stdout.write(f"after-commit jobs (the receipt e-mail): {run_due_jobs()}")
