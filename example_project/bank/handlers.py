"""Handlers of the bank's events.

The balance row commits with the account's events, or not at all. The integration events
need no handler: ``Account.publish_stored_events`` writes each stored event to the outbox.
The receipt e-mail is sent after the commit by a durable handler: recorded with the events,
run by the job runner, retried until the mail server takes it, at most once per withdrawal.
"""

from django.core.mail import send_mail

from domain_events import handler
from example_project.bank.events import AccountOpened, MoneyDeposited, MoneyWithdrawn
from example_project.bank.models import AccountBalance
from example_project.bank.projections import apply_to_balances


@handler(AccountOpened)
@handler(MoneyDeposited)
@handler(MoneyWithdrawn)
def keep_balances(event: AccountOpened | MoneyDeposited | MoneyWithdrawn) -> None:
    apply_to_balances(event)


@handler(MoneyWithdrawn, on_commit="durable")
def email_withdrawal_receipt(event: MoneyWithdrawn) -> None:
    # After the commit, so the balance row read here is the one this withdrawal wrote. An
    # SMTP error is retried with backoff; the job ends failed (admin, outbox_status) if the
    # mail server never takes it.
    owner = AccountBalance.objects.get(account_id=event.account_id).owner
    send_mail(
        subject=f"Withdrawal of {event.amount}",
        message=f"{event.amount} was withdrawn; the balance is now {event.balance_after}.",
        from_email="bank@example.com",
        recipient_list=[f"{owner}@example.com"],
    )
