"""Admin screens for operators: find stuck outbox rows and fix them without SQL.

Rows are read-only here; what can change is what the actions do, each behind its own
permission (``outbox.retry_outboxmessage``, ``outbox.mark_failed_outboxmessage``,
``outbox.replay_outboxmessage``) and recorded in the admin log.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from uuid import UUID

from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Max, Model, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import Truncator
from django.utils.timesince import timesince

from outbox.models import InboxMessage, OutboxMessage
from outbox.operations import actions, stats

__all__ = ["InboxMessageAdmin", "OutboxMessageAdmin", "ReadOnlyModelAdmin", "pretty_json"]

if TYPE_CHECKING:
    # django-stubs makes ModelAdmin and Paginator generic; at run time they are not.
    _ModelAdmin = admin.ModelAdmin[Any]
    _Paginator = Paginator[Any]
else:
    _ModelAdmin = admin.ModelAdmin
    _Paginator = Paginator
# Event types offered by the filter come from unpublished rows and this many recent rows,
# so building the filter never scans a table that keeps millions of published rows.
EVENT_TYPE_FILTER_RECENT_ROWS = 10_000
LAST_ERROR_LIST_LENGTH = 80


def pretty_json(value: Any) -> SafeString:
    """``value`` as indented JSON in a ``<pre>`` block, for read-only detail pages."""
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)
    return format_html('<pre class="outbox-json">{}</pre>', text)


def format_duration(seconds: float) -> str:
    """``seconds`` in the largest whole unit that fits: "45 s", "12 min", "3 h", "2 d"."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f} {unit}"
    return f"{seconds:.0f} s"


class EstimatedCountPaginator(_Paginator):
    """Counts the unfiltered outbox with PostgreSQL's estimate once the table is large.

    The admin counts the rows to paginate; an exact count(*) over the published rows a
    table keeps for its retention period would make every visit to the list slow.
    Filtered lists (stuck, ready, failed) are small and counted exactly.
    """

    @cached_property
    def count(self) -> int:
        rows = self.object_list
        if isinstance(rows, QuerySet) and not rows.query.where:
            estimate = stats.estimated_table_rows(rows.db)
            if estimate >= stats.EXACT_COUNT_LIMIT:
                return estimate
        return super().count


class ReadOnlyModelAdmin(_ModelAdmin):
    """An admin that shows rows and never adds, edits or deletes them.

    Staff with the model's view permission can browse; nobody can change a row from the
    admin. Subclasses add actions that go through explicit permissions instead.
    """

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


class StuckFilter(admin.SimpleListFilter):
    """Rows that need an operator: failed, or ready for longer than ``OUTBOX["STUCK_AFTER"]``."""

    title = "stuck"
    parameter_name = "stuck"

    def lookups(
        self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]
    ) -> list[tuple[str, str]]:
        threshold = format_duration(stats.stuck_after().total_seconds())
        return [("yes", f"failed, or ready over {threshold}")]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[OutboxMessage]
    ) -> QuerySet[OutboxMessage]:
        if self.value() == "yes":
            return queryset.filter(stats.stuck_condition())
        return queryset


class EventTypeFilter(admin.SimpleListFilter):
    """Event types of the rows an operator is likely to look for (see the constant above)."""

    title = "event type"
    parameter_name = "event_type"

    def lookups(
        self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]
    ) -> list[tuple[str, str]]:
        # Bounded queries only: the newest ids as a range (an index range scan; an IN over
        # a LIMIT subquery made PostgreSQL hash the whole table), then the unpublished rows
        # through the relay's partial index.
        unpublished = OutboxMessage.objects.exclude(status=OutboxMessage.Status.PUBLISHED)
        event_types = set(_event_types(unpublished))
        newest = OutboxMessage.objects.aggregate(newest=Max("pk"))["newest"]
        if newest is not None:
            recent = OutboxMessage.objects.filter(pk__gt=newest - EVENT_TYPE_FILTER_RECENT_ROWS)
            event_types |= set(_event_types(recent))
        if self.value():
            event_types.add(str(self.value()))
        return [(event_type, event_type) for event_type in sorted(event_types)]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[OutboxMessage]
    ) -> QuerySet[OutboxMessage]:
        if self.value():
            return queryset.filter(event_type=self.value())
        return queryset


def _event_types(rows: QuerySet[OutboxMessage]) -> QuerySet[OutboxMessage, str]:
    return rows.order_by().values_list("event_type", flat=True).distinct()


@admin.register(OutboxMessage)
class OutboxMessageAdmin(ReadOnlyModelAdmin):
    """The outbox: status of every message, the stuck ones, and the actions that fix them."""

    change_list_template = "admin/outbox/outboxmessage/change_list.html"
    list_display = [
        "message_id",
        "status_badge",
        "event_type",
        "ordering_key",
        "age",
        "attempts",
        "short_last_error",
    ]
    list_filter = [StuckFilter, "status", EventTypeFilter]
    search_fields = ["aggregate_id"]
    search_help_text = "A message id (UUID), an aggregate id, or an ordering key type:id."
    ordering = ["-id"]
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    actions = ["retry_now", "mark_failed", "replay", "replay_with_new_ids"]
    fieldsets = [
        (None, {"fields": ["message_id", "status", "event_type", "routing_key", "exchange"]}),
        ("Aggregate", {"fields": ["aggregate_type", "aggregate_id", "ordering_key"]}),
        (
            "Delivery",
            {
                "fields": [
                    "attempts",
                    "next_attempt_at",
                    "last_error",
                    "created_at",
                    "published_at",
                ]
            },
        ),
        ("Message", {"fields": ["formatted_payload", "formatted_headers"]}),
    ]

    # --- list columns ---

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: OutboxMessage) -> SafeString:
        return format_html(
            '<span class="outbox-status outbox-status-{}">{}</span>', obj.status, obj.status
        )

    @admin.display(description="age", ordering="created_at")
    def age(self, obj: OutboxMessage) -> str:
        return timesince(obj.created_at, timezone.now())

    @admin.display(description="last error")
    def short_last_error(self, obj: OutboxMessage) -> str:
        return Truncator(obj.last_error).chars(LAST_ERROR_LIST_LENGTH)

    @admin.display(description="payload")
    def formatted_payload(self, obj: OutboxMessage) -> SafeString:
        return pretty_json(obj.payload)

    @admin.display(description="headers")
    def formatted_headers(self, obj: OutboxMessage) -> SafeString:
        return pretty_json(obj.headers)

    # --- search ---

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[OutboxMessage], search_term: str
    ) -> tuple[QuerySet[OutboxMessage], bool]:
        """Exact matches only: each is an index lookup, and a UUID is never half-typed."""
        term = search_term.strip()
        if not term:
            return queryset, False
        condition = Q(aggregate_id=term) | Q(ordering_key=term)
        with contextlib.suppress(ValueError):
            condition |= Q(message_id=UUID(term))
        return queryset.filter(condition), False

    # --- summary above the list ---

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        summary = stats.summary()
        oldest = summary.oldest_ready_age_seconds
        context = {
            **(extra_context or {}),
            "outbox_summary": summary,
            "outbox_oldest_ready": None if oldest is None else format_duration(oldest),
            "outbox_stuck_after": format_duration(summary.stuck_after_seconds),
        }
        return super().changelist_view(request, extra_context=context)

    # --- actions ---

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("outbox.retry_outboxmessage")

    def has_mark_failed_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("outbox.mark_failed_outboxmessage")

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("outbox.replay_outboxmessage")

    @admin.action(permissions=["retry"], description="Retry now (failed or waiting rows)")
    def retry_now(self, request: HttpRequest, queryset: QuerySet[OutboxMessage]) -> None:
        selected = queryset.count()
        changed = actions.retry_now(
            queryset, on_batch=self._audit(request, "Retried now: ready, attempts reset to 0")
        )
        self._report(request, selected, changed, "set to ready, due now", "not ready or failed")

    @admin.action(permissions=["mark_failed"], description="Mark failed (stop retrying)")
    def mark_failed(self, request: HttpRequest, queryset: QuerySet[OutboxMessage]) -> None:
        selected = queryset.count()
        changed = actions.mark_failed(
            queryset,
            actor=f"{request.user.get_username()} in the admin",
            on_batch=self._audit(request, "Marked failed"),
        )
        self._report(request, selected, changed, "marked failed", "not ready")

    @admin.action(permissions=["replay"], description="Replay (same message id)")
    def replay(self, request: HttpRequest, queryset: QuerySet[OutboxMessage]) -> None:
        selected = queryset.count()
        changed = actions.replay(
            queryset, on_batch=self._audit(request, "Replayed with the same message id")
        )
        self._report(request, selected, changed, "put back to ready", "not published or failed")

    @admin.action(permissions=["replay"], description="Replay as new messages (new ids)")
    def replay_with_new_ids(self, request: HttpRequest, queryset: QuerySet[OutboxMessage]) -> None:
        selected = queryset.count()
        changed = actions.replay(
            queryset,
            new_ids=True,
            on_batch=self._audit(
                request, f"Replayed as a new message ({actions.REPLAY_OF_HEADER} header)"
            ),
        )
        self._report(
            request, selected, changed, "copied as new messages", "not published or failed"
        )

    def _audit(self, request: HttpRequest, change_message: str) -> Callable[[list[int]], None]:
        user_id = request.user.pk
        if user_id is None:  # the admin only runs actions for logged-in staff
            raise PermissionDenied

        def log(ids: list[int]) -> None:
            rows = OutboxMessage.objects.filter(pk__in=ids).only(
                "pk", "event_type", "message_id", "status"
            )
            LogEntry.objects.log_actions(
                user_id=user_id,
                queryset=list(rows),
                action_flag=CHANGE,
                change_message=change_message,
            )

        return log

    def _report(
        self,
        request: HttpRequest,
        selected: int,
        changed: int,
        done: str,
        skipped_because: str,
    ) -> None:
        self.message_user(request, f"{changed} message(s) {done}.", messages.SUCCESS)
        skipped = selected - changed
        if skipped > 0:
            self.message_user(
                request,
                f"{skipped} message(s) left unchanged: {skipped_because}, or being published.",
                messages.WARNING,
            )


@admin.register(InboxMessage)
class InboxMessageAdmin(ReadOnlyModelAdmin):
    """What each consumer has processed: read-only, since deleting a record would let its
    message be processed again."""

    list_display = ["message_id", "consumer", "event_type", "processed_at"]
    list_filter = ["consumer"]
    # Exact match only: the unique (consumer, message_id) index serves a message-id lookup.
    search_fields = ["=message_id"]
    ordering = ["-id"]
    show_full_result_count = False
    paginator = EstimatedCountPaginator


# The local jobs' screen lives with the jobs; importing it registers it.
from outbox.jobs import admin as _jobs_admin  # noqa: E402, F401
