"""Handlers of the bank's events, run in the transaction that saves an account.

The balance row commits with the account's events, or not at all. The integration events
need no handler: ``Account.publish_stored_events`` writes each stored event to the outbox.
"""

from domain_events import handler
from example_project.bank.events import AccountOpened, MoneyDeposited, MoneyWithdrawn
from example_project.bank.projections import apply_to_balances


@handler(AccountOpened)
@handler(MoneyDeposited)
@handler(MoneyWithdrawn)
def keep_balances(event: AccountOpened | MoneyDeposited | MoneyWithdrawn) -> None:
    apply_to_balances(event)
