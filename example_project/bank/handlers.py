"""Handlers of the bank's events, run in the transaction that saves an account.

The balance row and the outbox row commit with the account's events, or not at all.
"""

from domain_events import handler
from example_project.bank.events import AccountOpened, MoneyDeposited, MoneyWithdrawn
from example_project.bank.projections import apply_to_balances
from outbox import publish


@handler(AccountOpened)
@handler(MoneyDeposited)
@handler(MoneyWithdrawn)
def keep_balances(event: AccountOpened | MoneyDeposited | MoneyWithdrawn) -> None:
    apply_to_balances(event)


@handler(MoneyWithdrawn)
def announce_withdrawal(event: MoneyWithdrawn) -> None:
    # The integration event is a contract with other services: its payload is spelled out.
    publish(
        "bank.money_withdrawn",
        {
            "account_id": event.account_id,
            "amount": event.amount,
            "balance_after": event.balance_after,
            "withdrawn_at": event.occurred_at,
        },
        aggregate_type="bank.account",
        aggregate_id=event.account_id,
    )
