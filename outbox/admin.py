"""Admin screens for operators: find stuck outbox rows and dead letters, and fix them without SQL.

Rows are read-only here; what can change is what the actions do, each behind its own
permission (``outbox.retry_outboxmessage``, ``outbox.mark_failed_outboxmessage``,
``outbox.replay_outboxmessage``, ``outbox.requeue_deadletter``, ``outbox.discard_deadletter``)
and recorded in the admin log. Actions that send or stop messages first show a confirmation
page listing what will happen, as Django's delete does: replay, replay as new, mark failed,
requeue and discard always; retry now for more than a page of rows, or from a detail page.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Collection, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

import pika.exceptions
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.models import CHANGE, LogEntry
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Case, Max, Model, OuterRef, Q, QuerySet, Subquery, When
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.utils.safestring import SafeString

from outbox.exceptions import RequeueRefusedError
from outbox.models import DeadLetter, InboxMessage, OutboxMessage
from outbox.operations import actions, dead_letters, stats

__all__ = [
    "DeadLetterAdmin",
    "InboxMessageAdmin",
    "OutboxMessageAdmin",
    "ReadOnlyModelAdmin",
    "format_time",
    "pretty_json",
]

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
#: Rows a confirmation page lists by name; the rest are counted.
CONFIRMATION_LIST_ROWS = 100
#: Characters of a message id the lists show; the whole id is in the tooltip and the detail.
SHORT_ID_LENGTH = 8
# POST field of the detail pages' buttons: where to go back after the action.
RETURN_FIELD = "_return"
# POST field of the detail pages' buttons: confirm even an action that would not ask.
CONFIRM_FIELD = "_confirm"

Status = OutboxMessage.Status


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


def format_time(
    value: datetime | None, now: datetime | None = None, *, compact: bool = False
) -> SafeString:
    """``value`` to the second in the current time zone, then how long ago (or in how long)
    it is: ``2026-12-03 13:15:22 12 min ago``. ``compact`` (the lists) leaves out the date of
    a time today; the tooltip always has the whole of it."""
    if value is None:
        return format_html("{}", "—")
    now = now or timezone.now()
    local = timezone.localtime(value)
    full = local.strftime("%Y-%m-%d %H:%M:%S")
    shown = (
        local.strftime("%H:%M:%S")
        if compact and local.date() == timezone.localtime(now).date()
        else full
    )
    seconds = (now - value).total_seconds()
    relative = (
        f"{format_duration(seconds)} ago" if seconds >= 0 else f"in {format_duration(-seconds)}"
    )
    return format_html(
        '<time class="outbox-time" datetime="{}" title="{}">{}</time>'
        ' <span class="outbox-age">{}</span>',
        value.isoformat(),
        full,
        shown,
        relative,
    )


def one_line(text: str) -> SafeString:
    """The first line of ``text``, cut by CSS to the column's width; all of it in the tooltip."""
    stripped = text.strip()
    if not stripped:
        return format_html("{}", "")
    first = stripped.splitlines()[0][: LAST_ERROR_LIST_LENGTH * 4]
    return format_html('<span class="outbox-oneline" title="{}">{}</span>', stripped[:2000], first)


def short_id(value: object, url: str | None = None) -> SafeString:
    """The start of a message id, the whole id in the tooltip; linked to ``url`` if given (the
    lists leave the link to Django, which keeps the filters for the way back)."""
    text = str(value) or "-"
    if url is None:
        return format_html(
            '<span class="outbox-id" title="{}">{}</span>', text, text[:SHORT_ID_LENGTH]
        )
    return format_html(
        '<a class="outbox-id" href="{}" title="{}">{}</a>', url, text, text[:SHORT_ID_LENGTH]
    )


def preformatted(text: str) -> SafeString:
    return (
        format_html('<pre class="outbox-text">{}</pre>', text) if text else format_html("{}", "—")
    )


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


class OperatorAdmin(ReadOnlyModelAdmin):
    """A read-only admin whose actions confirm first, write the admin log, report what they
    changed and can be started from a detail page's buttons.

    Subclasses list ``detail_actions``: (action name, button label, statuses it applies to).
    """

    change_form_template = "admin/outbox/change_form.html"
    detail_actions: Sequence[tuple[str, str, Collection[str]]] = ()
    #: What one row is called in the messages after an action (default: the verbose name).
    noun = ""

    def confirmation_columns(self, obj: Any) -> list[Any]:
        """The cells describing ``obj`` on a confirmation page, under ``confirmation_headers``."""
        raise NotImplementedError

    confirmation_headers: Sequence[str] = ()

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        obj = self.get_object(request, object_id)
        buttons = []
        if obj is not None:
            allowed = self.get_actions(request)
            for name, label, statuses in self.detail_actions:
                if name in allowed and getattr(obj, "status", None) in statuses:
                    buttons.append((name, label))
        context = {
            **(extra_context or {}),
            "outbox_buttons": buttons,
            "outbox_changelist_url": reverse(
                f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist"
            ),
            "outbox_return_field": RETURN_FIELD,
            "outbox_confirm_field": CONFIRM_FIELD,
        }
        return super().change_view(request, object_id, form_url, extra_context=context)

    def confirm(
        self,
        request: HttpRequest,
        queryset: QuerySet[Any],
        *,
        action: str,
        question: str,
        consequence: str,
        statuses: Collection[str],
        always: bool = True,
    ) -> TemplateResponse | None:
        """The confirmation page of ``action`` on ``queryset``, or None when the POST is the
        confirmation (or ``always`` is false and the rows fit in one page)."""
        if request.POST.get("post") == "yes":
            return None
        total = queryset.count()
        if not always and CONFIRM_FIELD not in request.POST and total <= self.list_per_page:
            return None
        listed = list(queryset.order_by("pk")[:CONFIRMATION_LIST_ROWS])
        changing = queryset.filter(status__in=statuses).count()
        select_across = request.POST.get("select_across") == "1"
        context = {
            **self.admin_site.each_context(request),
            "title": question,
            "opts": self.opts,
            "action": action,
            "question": question,
            "consequence": consequence,
            "headers": self.confirmation_headers,
            "rows": [(obj.status in statuses, self.confirmation_columns(obj)) for obj in listed],
            "total": total,
            "changing": changing,
            "skipped": total - changing,
            "not_listed": total - len(listed),
            "select_across": select_across,
            # Django runs an action only with some rows ticked, even across all pages.
            "selected": request.POST.getlist(ACTION_CHECKBOX_NAME),
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
            "return_field": RETURN_FIELD,
            "return_to": self._return_url(request) or "",
            "cancel_url": self._return_url(request) or request.get_full_path(),
        }
        return TemplateResponse(request, "admin/outbox/confirm_action.html", context)

    def finish(self, request: HttpRequest) -> HttpResponse | None:
        """Where to go after an action: back to the detail page it started from, if any."""
        url = self._return_url(request)
        return HttpResponseRedirect(url) if url else None

    def _return_url(self, request: HttpRequest) -> str | None:
        url = request.POST.get(RETURN_FIELD, "")
        if url and url_has_allowed_host_and_scheme(
            url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        ):
            return url
        return None

    def audit(self, request: HttpRequest, change_message: str) -> Callable[[list[int]], None]:
        """A batch callback writing one admin-log entry per changed row, in the batch's
        transaction, so the entry commits or rolls back with the change."""
        user_id = request.user.pk
        if user_id is None:  # the admin only runs actions for logged-in staff
            raise PermissionDenied
        model = self.model

        def log(ids: list[int]) -> None:
            LogEntry.objects.log_actions(
                user_id=user_id,
                queryset=list(model._default_manager.filter(pk__in=ids)),
                action_flag=CHANGE,
                change_message=change_message,
            )

        return log

    def report(
        self,
        request: HttpRequest,
        selected: int,
        changed: int,
        done: str,
        skipped_because: str,
    ) -> None:
        self.message_user(request, f"{changed} {self._noun()}(s) {done}.", messages.SUCCESS)
        skipped = selected - changed
        if skipped > 0:
            self.message_user(
                request,
                f"{skipped} {self._noun()}(s) left unchanged: {skipped_because}.",
                messages.WARNING,
            )

    def _noun(self) -> str:
        return self.noun or str(self.opts.verbose_name)


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


class CreatedFilter(admin.SimpleListFilter):
    """Rows created in a recent window, or before it: what on-call asks first.

    Relative windows rather than a date hierarchy: the hierarchy reads the whole table's
    dates to build its links, which on millions of kept rows takes seconds per page.
    """

    title = "created"
    parameter_name = "created"
    WINDOWS = {
        "15m": ("in the last 15 min", timedelta(minutes=15)),
        "1h": ("in the last hour", timedelta(hours=1)),
        "24h": ("in the last 24 h", timedelta(hours=24)),
        "7d": ("in the last 7 days", timedelta(days=7)),
    }

    def lookups(
        self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]
    ) -> list[tuple[str, str]]:
        return [(key, label) for key, (label, _) in self.WINDOWS.items()] + [
            ("older", "more than 7 days ago")
        ]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[OutboxMessage]
    ) -> QuerySet[OutboxMessage]:
        value = self.value()
        if value == "older":
            return queryset.filter(created_at__lt=timezone.now() - self.WINDOWS["7d"][1])
        if value in self.WINDOWS:
            return queryset.filter(created_at__gte=timezone.now() - self.WINDOWS[value][1])
        return queryset


class OrderingKeyFilter(admin.SimpleListFilter):
    """All rows of one ordering key, in position order (the order the relay sends them);
    shown only while active, reached from a row's ordering key."""

    title = "ordering key"
    parameter_name = "ordering_key"

    def lookups(
        self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]
    ) -> list[tuple[str, str]]:
        value = self.value()
        return [(value, value)] if value else []

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[OutboxMessage]
    ) -> QuerySet[OutboxMessage]:
        if self.value():
            return queryset.filter(ordering_key=self.value())
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


def blocked_by_subquery() -> Case:
    """For a ready row with an ordering key: the pk of the oldest unpublished row of its key
    before it (the one the relay must send first), else NULL. One probe of the relay's
    ``outbox_unpublished_key_idx`` per row shown."""
    head = (
        OutboxMessage.objects.filter(
            ordering_key=OuterRef("ordering_key"), position__lt=OuterRef("position")
        )
        .exclude(status=Status.PUBLISHED)
        .order_by("position")
        .values("pk")[:1]
    )
    return Case(
        When(Q(status=Status.READY) & ~Q(ordering_key=""), then=Subquery(head)), default=None
    )


def _changelist(model: type[Model]) -> str:
    return reverse(f"admin:outbox_{model._meta.model_name}_changelist")


def _change(obj: Model) -> str:
    return reverse(f"admin:outbox_{obj._meta.model_name}_change", args=[obj.pk])


@admin.register(OutboxMessage)
class OutboxMessageAdmin(OperatorAdmin):
    """The outbox: status of every message, the stuck ones, and the actions that fix them."""

    change_list_template = "admin/outbox/outboxmessage/change_list.html"
    noun = "message"
    list_display = [
        "short_message_id",
        "status_badge",
        "short_event_type",
        "ordering_key_list",
        "created_short",
        "short_attempts",
        "short_last_error",
    ]
    list_display_links = ["short_message_id"]
    list_filter = [StuckFilter, "status", EventTypeFilter, CreatedFilter, OrderingKeyFilter]
    search_fields = ["aggregate_id"]
    search_help_text = "A message id (UUID), an aggregate id, or an ordering key type:id."
    ordering = ["-id"]
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    actions = ["retry_now", "mark_failed", "replay", "replay_with_new_ids"]
    detail_actions = [
        ("retry_now", "Retry now", {Status.READY, Status.FAILED}),
        ("mark_failed", "Mark failed", {Status.READY}),
        ("replay", "Replay (same message id)", {Status.PUBLISHED, Status.FAILED}),
        ("replay_with_new_ids", "Replay as a new message", {Status.PUBLISHED, Status.FAILED}),
    ]
    confirmation_headers = ["message id", "status", "event type", "ordering key", "created"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[OutboxMessage]:
        rows: QuerySet[OutboxMessage] = super().get_queryset(request)
        return rows.annotate(blocked_by_pk=blocked_by_subquery())

    def get_ordering(self, request: HttpRequest) -> Any:
        # One key's rows read best in the order the relay sends them.
        if request.GET.get(OrderingKeyFilter.parameter_name):
            return ["position"]
        return self.ordering or []

    def get_fieldsets(self, request: HttpRequest, obj: OutboxMessage | None = None) -> Any:
        published = obj is not None and obj.status == Status.PUBLISHED
        error = "error_history" if published else "current_error"
        # What on-call reads first (state, error, who holds it, when next) before routing.
        state = ["message_id", "status_detail", "event_type", "attempts", error, "next_attempt"]
        return [
            (None, {"fields": [*state, "lease", "created", "published"]}),
            (
                "Routing and order",
                {
                    "fields": [
                        "routing_key",
                        "exchange",
                        "aggregate_type",
                        "aggregate_id",
                        "ordering_key_link",
                        "position",
                    ]
                },
            ),
            ("Message", {"fields": ["formatted_payload", "formatted_headers"]}),
        ]

    # --- list columns and detail fields ---

    @admin.display(description="id", ordering="id")
    def short_message_id(self, obj: OutboxMessage) -> SafeString:
        return short_id(obj.message_id)

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: OutboxMessage) -> SafeString:
        badge = format_html(
            '<span class="outbox-status outbox-status-{}">{}</span>', obj.status, obj.status
        )
        blocker = getattr(obj, "blocked_by_pk", None)
        if blocker is None:
            return badge
        url = reverse("admin:outbox_outboxmessage_change", args=[blocker])
        return format_html(
            '{} <a class="outbox-blocked" href="{}" title="waits for an older unpublished row'
            ' of its ordering key">blocked</a>',
            badge,
            url,
        )

    @admin.display(description="status")
    def status_detail(self, obj: OutboxMessage) -> SafeString:
        badge = format_html(
            '<span class="outbox-status outbox-status-{}">{}</span>', obj.status, obj.status
        )
        blocker_pk = getattr(obj, "blocked_by_pk", None)
        if blocker_pk is None:
            return badge
        blocker = OutboxMessage.objects.filter(pk=blocker_pk).first()
        if blocker is None:  # published meanwhile
            return badge
        return format_html(
            '{} <span class="outbox-blocked-by">blocked by <a id="outbox-blocked-by" href="{}">'
            "{}</a> ({}, {}, position {}): the relay sends the rows of {} in order</span>",
            badge,
            _change(blocker),
            str(blocker.message_id)[:SHORT_ID_LENGTH],
            blocker.status,
            blocker.event_type,
            blocker.position,
            obj.ordering_key,
        )

    @admin.display(description="event type", ordering="event_type")
    def short_event_type(self, obj: OutboxMessage) -> SafeString:
        return format_html(
            '<span class="outbox-oneline outbox-event-type" title="{}">{}</span>',
            obj.event_type,
            obj.event_type,
        )

    @admin.display(description="tries", ordering="attempts")
    def short_attempts(self, obj: OutboxMessage) -> int:
        return obj.attempts

    @admin.display(description="key", ordering="ordering_key")
    def ordering_key_list(self, obj: OutboxMessage) -> SafeString:
        return self.ordering_key_link(obj)

    @admin.display(description="ordering key", ordering="ordering_key")
    def ordering_key_link(self, obj: OutboxMessage) -> SafeString:
        if not obj.ordering_key:
            return format_html("{}", "—")
        url = f"{_changelist(OutboxMessage)}?{urlencode({'ordering_key': obj.ordering_key})}"
        return format_html(
            '<a class="outbox-oneline outbox-key" href="{}" title="all rows of {} in position'
            ' order">{}</a>',
            url,
            obj.ordering_key,
            obj.ordering_key,
        )

    @admin.display(description="created", ordering="created_at")
    def created(self, obj: OutboxMessage) -> SafeString:
        return format_time(obj.created_at)

    @admin.display(description="created", ordering="created_at")
    def created_short(self, obj: OutboxMessage) -> SafeString:
        return format_time(obj.created_at, compact=True)

    @admin.display(description="published")
    def published(self, obj: OutboxMessage) -> SafeString:
        return format_time(obj.published_at)

    @admin.display(description="next attempt")
    def next_attempt(self, obj: OutboxMessage) -> SafeString:
        if obj.status != Status.READY:
            return format_html("— (not {})", obj.status)
        return format_time(obj.next_attempt_at)

    @admin.display(description="lease")
    def lease(self, obj: OutboxMessage) -> SafeString:
        if not obj.lease_owner or obj.lease_expires_at is None:
            return format_html("{}", "— (no relay holds it)")
        now = timezone.now()
        state = "until" if obj.lease_expires_at > now else "expired"
        return format_html(
            '<span class="outbox-lease">{}</span> {} {}',
            obj.lease_owner,
            state,
            format_time(obj.lease_expires_at, now),
        )

    @admin.display(description="last error")
    def short_last_error(self, obj: OutboxMessage) -> SafeString:
        # A published row's error is history: the list shows only current trouble.
        if obj.status == Status.PUBLISHED:
            return format_html("{}", "")
        return one_line(obj.last_error)

    @admin.display(description="last error")
    def current_error(self, obj: OutboxMessage) -> SafeString:
        return preformatted(obj.last_error)

    @admin.display(description="earlier error (history: published since)")
    def error_history(self, obj: OutboxMessage) -> SafeString:
        if not obj.last_error:
            return format_html("{}", "—")
        return format_html('<pre class="outbox-text outbox-history">{}</pre>', obj.last_error)

    @admin.display(description="payload")
    def formatted_payload(self, obj: OutboxMessage) -> SafeString:
        return pretty_json(obj.payload)

    @admin.display(description="headers")
    def formatted_headers(self, obj: OutboxMessage) -> SafeString:
        return pretty_json(obj.headers)

    def confirmation_columns(self, obj: OutboxMessage) -> list[Any]:
        return [
            short_id(obj.message_id, _change(obj)),
            obj.status,
            obj.event_type,
            obj.ordering_key or "—",
            format_time(obj.created_at),
        ]

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
            # Open dead letters are few; the count reads the partial index of open records.
            "outbox_dead_letters": DeadLetter.objects.filter(status=DeadLetter.Status.DEAD).count(),
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
    def retry_now(
        self, request: HttpRequest, queryset: QuerySet[OutboxMessage]
    ) -> HttpResponse | None:
        retried = {Status.READY, Status.FAILED}
        page = self.confirm(
            request,
            queryset,
            action="retry_now",
            question="Retry these messages now?",
            consequence="Failed and waiting rows become ready, due now, with attempts reset to"
            " 0; the relay publishes them within seconds, each after the older unpublished"
            " rows of its ordering key. Published rows are left alone.",
            statuses=retried,
            always=False,
        )
        if page is not None:
            return page
        selected = queryset.count()
        changed = actions.retry_now(
            queryset, on_batch=self.audit(request, "Retried now: ready, attempts reset to 0")
        )
        self.report(
            request,
            selected,
            changed,
            "set to ready, due now",
            "not ready or failed, or being published",
        )
        return self.finish(request)

    @admin.action(permissions=["mark_failed"], description="Mark failed (stop retrying)")
    def mark_failed(
        self, request: HttpRequest, queryset: QuerySet[OutboxMessage]
    ) -> HttpResponse | None:
        page = self.confirm(
            request,
            queryset,
            action="mark_failed",
            question="Mark these messages failed?",
            consequence="Ready rows stop being retried and become failed, with your name in"
            " their last error. A failed row holds back the later rows of its ordering key"
            " until someone retries it.",
            statuses={Status.READY},
        )
        if page is not None:
            return page
        selected = queryset.count()
        changed = actions.mark_failed(
            queryset,
            actor=f"{request.user.get_username()} in the admin",
            on_batch=self.audit(request, "Marked failed"),
        )
        self.report(request, selected, changed, "marked failed", "not ready, or being published")
        return self.finish(request)

    @admin.action(permissions=["replay"], description="Replay (same message id)")
    def replay(
        self, request: HttpRequest, queryset: QuerySet[OutboxMessage]
    ) -> HttpResponse | None:
        page = self.confirm(
            request,
            queryset,
            action="replay",
            question="Replay these messages with their message ids?",
            consequence="Published and failed rows go back to ready and are sent again with"
            " the same message id: consumers with an inbox skip what they already processed."
            " Ready rows are on their way already and are left alone.",
            statuses={Status.PUBLISHED, Status.FAILED},
        )
        if page is not None:
            return page
        selected = queryset.count()
        changed = actions.replay(
            queryset, on_batch=self.audit(request, "Replayed with the same message id")
        )
        self.report(
            request,
            selected,
            changed,
            "put back to ready",
            "not published or failed, or being published",
        )
        return self.finish(request)

    @admin.action(permissions=["replay"], description="Replay as new messages (new ids)")
    def replay_with_new_ids(
        self, request: HttpRequest, queryset: QuerySet[OutboxMessage]
    ) -> HttpResponse | None:
        page = self.confirm(
            request,
            queryset,
            action="replay_with_new_ids",
            question="Replay these messages as new messages?",
            consequence="Published and failed rows are copied as new messages with new"
            f" message ids and an {actions.REPLAY_OF_HEADER} header: every consumer processes"
            " them again, including those that already did. The originals stay as they are.",
            statuses={Status.PUBLISHED, Status.FAILED},
        )
        if page is not None:
            return page
        selected = queryset.count()
        changed = actions.replay(
            queryset,
            new_ids=True,
            on_batch=self.audit(
                request, f"Replayed as a new message ({actions.REPLAY_OF_HEADER} header)"
            ),
        )
        self.report(
            request,
            selected,
            changed,
            "copied as new messages",
            "not published or failed, or being published",
        )
        return self.finish(request)


@admin.register(DeadLetter)
class DeadLetterAdmin(OperatorAdmin):
    """What the consumers dead-lettered: why, with the whole message, and the actions that
    send it back to its consumer (requeue) or close it (discard)."""

    change_list_template = "admin/outbox/deadletter/change_list.html"
    list_display = [
        "short_message_id",
        "consumer",
        "short_event_type",
        "status_badge",
        "dead_lettered_short",
        "short_attempts",
        "short_error",
    ]
    list_display_links = ["short_message_id"]
    list_filter = ["status", "consumer", "event_type"]
    date_hierarchy = "dead_lettered_at"
    search_help_text = "A message id or an aggregate id (exact)."
    search_fields = ["=message_id", "=aggregate_id"]
    ordering = ["-id"]
    actions = ["requeue", "discard"]
    detail_actions = [
        ("requeue", "Requeue", {DeadLetter.Status.DEAD, DeadLetter.Status.DISCARDED}),
        ("discard", "Discard", {DeadLetter.Status.DEAD}),
    ]
    confirmation_headers = ["message id", "status", "consumer", "event type", "dead-lettered"]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "message_id",
                    "status_detail",
                    "consumer",
                    "queue",
                    "event_type",
                    "routing_key",
                    "aggregate_type",
                    "aggregate_id",
                ]
            },
        ),
        (
            "Failure",
            {
                "fields": [
                    "dead_lettered",
                    "attempts",
                    "reason",
                    "error_type",
                    "formatted_error",
                    "formatted_traceback",
                ]
            },
        ),
        ("Message", {"fields": ["formatted_payload", "formatted_headers", "formatted_properties"]}),
    ]

    @admin.display(description="message id", ordering="message_id")
    def short_message_id(self, obj: DeadLetter) -> SafeString:
        return short_id(obj.message_id)

    @admin.display(description="event type", ordering="event_type")
    def short_event_type(self, obj: DeadLetter) -> SafeString:
        return format_html(
            '<span class="outbox-oneline outbox-event-type" title="{}">{}</span>',
            obj.event_type,
            obj.event_type,
        )

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: DeadLetter) -> SafeString:
        return format_html(
            '<span class="outbox-status outbox-status-{}">{}</span>', obj.status, obj.status
        )

    @admin.display(description="status")
    def status_detail(self, obj: DeadLetter) -> SafeString:
        badge = self.status_badge(obj)
        if obj.resolved_at is None:
            return badge
        return format_html("{} by {} at {}", badge, obj.resolved_by, format_time(obj.resolved_at))

    @admin.display(description="dead-lettered", ordering="dead_lettered_at")
    def dead_lettered(self, obj: DeadLetter) -> SafeString:
        return format_time(obj.dead_lettered_at)

    @admin.display(description="dead-lettered", ordering="dead_lettered_at")
    def dead_lettered_short(self, obj: DeadLetter) -> SafeString:
        return format_time(obj.dead_lettered_at, compact=True)

    @admin.display(description="tries", ordering="attempts")
    def short_attempts(self, obj: DeadLetter) -> int:
        return obj.attempts

    @admin.display(description="error")
    def short_error(self, obj: DeadLetter) -> SafeString:
        return one_line(obj.error or obj.reason)

    @admin.display(description="error")
    def formatted_error(self, obj: DeadLetter) -> SafeString:
        return preformatted(obj.error)

    @admin.display(description="traceback")
    def formatted_traceback(self, obj: DeadLetter) -> SafeString:
        return preformatted(obj.traceback)

    @admin.display(description="payload")
    def formatted_payload(self, obj: DeadLetter) -> SafeString:
        if obj.payload is None:
            body = bytes(obj.body)
            return format_html(
                '<pre class="outbox-text">(not JSON, {} bytes) {}</pre>',
                len(body),
                repr(body[:2000]),
            )
        return pretty_json(obj.payload)

    @admin.display(description="headers")
    def formatted_headers(self, obj: DeadLetter) -> SafeString:
        return pretty_json(obj.headers)

    @admin.display(description="AMQP properties")
    def formatted_properties(self, obj: DeadLetter) -> SafeString:
        return pretty_json(obj.properties)

    def confirmation_columns(self, obj: DeadLetter) -> list[Any]:
        return [
            short_id(obj.message_id, _change(obj)),
            obj.status,
            obj.consumer,
            obj.event_type or "—",
            format_time(obj.dead_lettered_at),
        ]

    def has_requeue_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("outbox.requeue_deadletter")

    def has_discard_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("outbox.discard_deadletter")

    @admin.action(permissions=["requeue"], description="Requeue (back to the consumer's queue)")
    def requeue(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> HttpResponse | None:
        statuses = {DeadLetter.Status.DEAD, DeadLetter.Status.DISCARDED}
        page = self.confirm(
            request,
            queryset,
            action="requeue",
            question="Requeue these dead letters?",
            consequence="Each message is published from its record back to its consumer's queue"
            " with the same message id and no attempts counted: the consumer runs it as a first"
            " delivery (its inbox skips one it processed already). The copy in the broker's"
            " dead-letter queue is left as it is.",
            statuses=statuses,
        )
        if page is not None:
            return page
        selected = queryset.count()
        actor = f"{request.user.get_username()} in the admin"
        try:
            changed = dead_letters.requeue(
                queryset,
                actor=actor,
                on_batch=self.audit(request, "Requeued to its consumer's queue"),
            )
        except RequeueRefusedError as error:
            self.message_user(request, f"Requeue stopped: {error}.", messages.ERROR)
            return self.finish(request)
        except pika.exceptions.AMQPConnectionError as error:
            from outbox.management.base import broker_address

            self.message_user(
                request,
                f"Requeue stopped: cannot connect to RabbitMQ at {broker_address()}: {error}.",
                messages.ERROR,
            )
            return self.finish(request)
        self.report(request, selected, changed, "requeued", "already requeued, or being changed")
        return self.finish(request)

    @admin.action(permissions=["discard"], description="Discard (nobody processes them)")
    def discard(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> HttpResponse | None:
        page = self.confirm(
            request,
            queryset,
            action="discard",
            question="Discard these dead letters?",
            consequence="The records are marked discarded with your name: nobody processes these"
            " messages. The records stay (a discarded one can still be requeued); the copy in"
            " the broker's dead-letter queue is left as it is.",
            statuses={DeadLetter.Status.DEAD},
        )
        if page is not None:
            return page
        selected = queryset.count()
        changed = dead_letters.discard(
            queryset,
            actor=f"{request.user.get_username()} in the admin",
            on_batch=self.audit(request, "Discarded"),
        )
        self.report(request, selected, changed, "discarded", "not dead, or being changed")
        return self.finish(request)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[DeadLetter], search_term: str
    ) -> tuple[QuerySet[DeadLetter], bool]:
        """Exact matches on the message id or the aggregate id, each an index lookup."""
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(Q(message_id=term) | Q(aggregate_id=term)), False


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
