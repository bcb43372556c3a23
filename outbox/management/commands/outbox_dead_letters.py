"""``manage.py outbox_dead_letters <consumer> list|show|requeue|discard``: a consumer's dead
letters as recorded in the database, from the shell.

``requeue`` publishes the stored messages back to the consumer's queue with the same
``message_id`` and no attempt count; ``discard`` marks them as not to be processed. Both ask
for confirmation unless ``--noinput``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db.models import QuerySet

from outbox.consumer.registry import load_handlers, registry
from outbox.exceptions import RequeueRefusedError
from outbox.management.base import OutboxCommand, add_noinput_argument, count
from outbox.models import DeadLetter
from outbox.operations import dead_letters

#: Exit status of a requeue RabbitMQ refused (the queue is missing), as ``outbox_relay --once``.
EXIT_BROKER_REFUSED = 6
ACTIONS = ("list", "show", "requeue", "discard")
DONE = {"requeue": "requeued", "discard": "discarded"}
Status = DeadLetter.Status


class Command(OutboxCommand):
    help = (
        "List, show, requeue (back to the consumer's queue, same message id, attempts reset)"
        " or discard the dead letters a consumer recorded. Exit status: 0 done, 1 bad input"
        " or nothing matched, 4 database unavailable, 5 RabbitMQ unreachable, 6 RabbitMQ"
        " refused the requeue."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("consumer", help="consumer name given to @integration_handler")
        parser.add_argument("action", choices=ACTIONS, help="what to do: " + ", ".join(ACTIONS))
        parser.add_argument(
            "message_ids",
            nargs="*",
            metavar="MESSAGE_ID",
            help="the dead letters of these message ids (show, requeue, discard)",
        )
        parser.add_argument(
            "--all",
            action="store_true",
            help="requeue or discard every dead letter of the consumer (with --event-type: of it)",
        )
        parser.add_argument(
            "--event-type",
            metavar="TYPE",
            help="only dead letters of this event type",
        )
        parser.add_argument(
            "--status",
            choices=[*Status.values, "all"],
            default=Status.DEAD,
            help="list: records in this status (default dead; all for every record)",
        )
        parser.add_argument(
            "--limit",
            type=int,
            default=50,
            metavar="N",
            help="list: show at most N records, newest first (default 50)",
        )
        add_noinput_argument(parser, what="requeue or discard")

    def handle(self, *args: Any, **options: Any) -> None:
        consumer = options["consumer"]
        action = options["action"]
        records = DeadLetter.objects.filter(consumer=consumer)
        if not records.exists():
            self._check_consumer_known(consumer)
        if options["event_type"]:
            records = records.filter(event_type=options["event_type"])
        if action == "list":
            if options["message_ids"]:
                raise CommandError("list takes no message ids; use show")
            self._list(consumer, records, options)
        elif action == "show":
            if not options["message_ids"]:
                raise CommandError("show needs one or more message ids")
            self._show(consumer, records.filter(message_id__in=options["message_ids"]))
        else:
            self._act(consumer, action, records, options)

    def _check_consumer_known(self, consumer: str) -> None:
        load_handlers()
        if consumer not in registry.names():
            known = ", ".join(registry.names()) or "none"
            raise CommandError(
                f"no dead letters recorded for consumer {consumer!r}, and no such consumer is"
                f" registered (registered: {known})"
            )

    def _list(self, consumer: str, records: QuerySet[DeadLetter], options: dict[str, Any]) -> None:
        if options["limit"] < 1:
            raise CommandError("--limit must be at least 1")
        if options["status"] != "all":
            records = records.filter(status=options["status"])
        total = records.count()
        for record in records.order_by("-dead_lettered_at", "-pk")[: options["limit"]]:
            self.stdout.write(
                f"{record.dead_lettered_at.isoformat(timespec='seconds')}  {record.status:<9}"
                f"  {record.message_id or '-'}  {record.event_type or '-'}"
                f"  attempts {record.attempts}  {_one_line(record)}"
            )
        shown = min(total, options["limit"])
        status = "" if options["status"] == "all" else f", status {options['status']}"
        more = f", newest {shown} shown" if shown < total else ""
        self.say(f"{count(total, 'dead letter')} of consumer {consumer}{status}{more}")

    def _show(self, consumer: str, records: QuerySet[DeadLetter]) -> None:
        shown = list(records.order_by("-dead_lettered_at", "-pk"))
        if not shown:
            raise CommandError(f"no dead letter of consumer {consumer!r} has these message ids")
        for record in shown:
            self.stdout.write(_details(record))

    def _act(
        self,
        consumer: str,
        action: str,
        records: QuerySet[DeadLetter],
        options: dict[str, Any],
    ) -> None:
        ids = options["message_ids"]
        if not ids and not options["all"]:
            raise CommandError(f"{action} needs message ids, or --all")
        if ids and options["all"]:
            raise CommandError("give message ids or --all, not both")
        if ids:
            records = records.filter(message_id__in=ids)
        statuses = [Status.DEAD, Status.DISCARDED] if action == "requeue" else [Status.DEAD]
        chosen = records.filter(status__in=statuses)
        total = chosen.count()
        if total == 0:
            raise CommandError(
                f"no {' or '.join(statuses)} dead letter of consumer {consumer!r} matches;"
                f" nothing to {action}"
            )
        queues = sorted(set(chosen.values_list("queue", flat=True)))
        if options["interactive"]:
            self._confirm(action, total, consumer)
        actor = "outbox_dead_letters"

        def each_batch(done: list[int]) -> None:
            for record in DeadLetter.objects.filter(pk__in=done):
                self.say(f"{DONE[action]} {record.message_id} ({record.event_type})", verbosity=2)

        try:
            if action == "requeue":
                changed = dead_letters.requeue(chosen, actor=actor, on_batch=each_batch)
            else:
                changed = dead_letters.discard(chosen, actor=actor, on_batch=each_batch)
        except RequeueRefusedError as error:
            raise CommandError(str(error), returncode=EXIT_BROKER_REFUSED) from error
        where = f" to {', '.join(queues)}" if action == "requeue" else ""
        self.say(f"{DONE[action]} {count(changed, 'dead letter')} of consumer {consumer}{where}")
        if changed < total:
            self.say(f"skipped {count(total - changed, 'dead letter')}: changed meanwhile")

    def _confirm(self, action: str, total: int, consumer: str) -> None:
        if not sys.stdin.isatty():
            raise CommandError(f"not asking on a non-interactive input: pass --noinput to {action}")
        question = f"{action.capitalize()} {count(total, 'dead letter')} of {consumer}? [y/N] "
        if input(question).strip().lower() not in {"y", "yes"}:
            raise CommandError(f"{action} cancelled")


def _one_line(record: DeadLetter) -> str:
    text = record.error or record.reason
    first = text.strip().splitlines()[0] if text.strip() else "-"
    return first if len(first) <= 100 else first[:99] + "…"


def _details(record: DeadLetter) -> str:
    payload = (
        json.dumps(record.payload, indent=2, ensure_ascii=False, sort_keys=True)
        if record.payload is not None
        else f"(not JSON) {bytes(record.body)[:500]!r}"
    )
    lines = [
        f"message id      {record.message_id or '-'}",
        f"consumer        {record.consumer} (queue {record.queue})",
        f"event type      {record.event_type or '-'}",
        f"routing key     {record.routing_key or '-'}",
        f"aggregate       {record.aggregate_type or '-'} {record.aggregate_id or '-'}",
        f"status          {record.status}"
        + (
            f" by {record.resolved_by} at {record.resolved_at.isoformat(timespec='seconds')}"
            if record.resolved_at
            else ""
        ),
        f"dead-lettered   {record.dead_lettered_at.isoformat(timespec='seconds')}",
        f"attempts        {record.attempts}",
        f"reason          {record.reason or '-'}",
        f"error           {record.error_type + ': ' if record.error_type else ''}{record.error}",
        "payload",
        payload,
        "headers",
        json.dumps(record.headers, indent=2, ensure_ascii=False, sort_keys=True),
    ]
    if record.traceback:
        lines += ["traceback", record.traceback.rstrip()]
    return "\n".join(lines) + "\n"
