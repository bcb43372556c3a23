"""The admin screen of local jobs: what waits, what failed and why, and a retry action
(permission ``outbox.retry_outboxjob``, recorded in the admin log). Registered by
``outbox.admin``."""

from __future__ import annotations

from collections.abc import Callable

from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import Truncator
from django.utils.timesince import timesince

from outbox.admin import LAST_ERROR_LIST_LENGTH, ReadOnlyModelAdmin, pretty_json
from outbox.models import OutboxJob
from outbox.operations import actions

__all__ = ["OutboxJobAdmin"]


@admin.register(OutboxJob)
class OutboxJobAdmin(ReadOnlyModelAdmin):
    """Local jobs (durable after-commit handlers) that wait, wait for a retry, or failed.
    Jobs that ran are deleted; their at-most-once records are in the inbox."""

    list_display = ["name", "key", "status_badge", "age", "attempts", "short_last_error"]
    list_filter = ["status", "kind", "name"]
    search_fields = ["=key"]
    search_help_text = "A job key (for a durable handler: the event id)."
    ordering = ["-id"]
    actions = ["retry_now"]
    fields = [
        "kind",
        "name",
        "key",
        "status",
        "attempts",
        "next_attempt_at",
        "last_error",
        "created_at",
        "formatted_payload",
    ]

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: OutboxJob) -> SafeString:
        return format_html(
            '<span class="outbox-status outbox-status-{}">{}</span>', obj.status, obj.status
        )

    @admin.display(description="age", ordering="created_at")
    def age(self, obj: OutboxJob) -> str:
        return timesince(obj.created_at, timezone.now())

    @admin.display(description="last error")
    def short_last_error(self, obj: OutboxJob) -> str:
        return Truncator(obj.last_error).chars(LAST_ERROR_LIST_LENGTH)

    @admin.display(description="payload")
    def formatted_payload(self, obj: OutboxJob) -> SafeString:
        return pretty_json(obj.payload)

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("outbox.retry_outboxjob")

    @admin.action(permissions=["retry"], description="Retry now (failed or waiting jobs)")
    def retry_now(self, request: HttpRequest, queryset: QuerySet[OutboxJob]) -> None:
        selected = queryset.count()
        changed = actions.retry_jobs(queryset, on_batch=self._audit(request))
        self.message_user(request, f"{changed} job(s) set to ready, due now.", messages.SUCCESS)
        if selected > changed:
            self.message_user(
                request,
                f"{selected - changed} job(s) left unchanged: running right now.",
                messages.WARNING,
            )

    def _audit(self, request: HttpRequest) -> Callable[[list[int]], None]:
        user_id = request.user.pk
        if user_id is None:  # the admin only runs actions for logged-in staff
            raise PermissionDenied

        def log(ids: list[int]) -> None:
            LogEntry.objects.log_actions(
                user_id=user_id,
                queryset=list(OutboxJob.objects.filter(pk__in=ids)),
                action_flag=CHANGE,
                change_message="Retried now: ready, runs reset to 0",
            )

        return log
