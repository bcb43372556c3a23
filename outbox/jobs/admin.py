"""The admin screen of local jobs: what waits, what failed and why, and a retry action
(permission ``outbox.retry_outboxjob``, confirmed beyond a page of rows or from a job's page,
recorded in the admin log). Registered by ``outbox.admin``."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import Truncator
from django.utils.timesince import timesince

from outbox.admin import LAST_ERROR_LIST_LENGTH, OperatorAdmin, pretty_json
from outbox.models import OutboxJob
from outbox.operations import actions

__all__ = ["OutboxJobAdmin"]


@admin.register(OutboxJob)
class OutboxJobAdmin(OperatorAdmin):
    """Local jobs (durable after-commit handlers) that wait, wait for a retry, or failed.
    Jobs that ran are deleted; their at-most-once records are in the inbox."""

    list_display = ["name", "key", "status_badge", "age", "attempts", "short_last_error"]
    list_filter = ["status", "kind", "name"]
    search_fields = ["=key"]
    search_help_text = "A job key (for a durable handler: the event id)."
    ordering = ["-id"]
    actions = ["retry_now"]
    noun = "job"
    detail_actions = [("retry_now", "Retry now", (OutboxJob.Status.READY, OutboxJob.Status.FAILED))]
    confirmation_headers = ["handler", "key", "status", "runs", "age"]
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

    def confirmation_columns(self, obj: OutboxJob) -> list[Any]:
        return [obj.name, obj.key, obj.status, obj.attempts, self.age(obj)]

    @admin.action(permissions=["retry"], description="Retry now (failed or waiting jobs)")
    def retry_now(self, request: HttpRequest, queryset: QuerySet[OutboxJob]) -> HttpResponse | None:
        # Like the messages' retry: a page of ticked rows runs at once, more (or a detail
        # page's button) asks first, since the handlers run again (an e-mail, a payment call).
        page = self.confirm(
            request,
            queryset,
            action="retry_now",
            question="Retry these jobs now?",
            consequence="Failed and waiting jobs become ready, due now, with their runs reset"
            " to 0; a runner calls their handlers again within seconds. Jobs being run right"
            " now are left alone.",
            statuses={OutboxJob.Status.READY, OutboxJob.Status.FAILED},
            always=False,
        )
        if page is not None:
            return page
        selected = queryset.count()
        changed = actions.retry_jobs(
            queryset, on_batch=self.audit(request, "Retried now: ready, runs reset to 0")
        )
        self.report(request, selected, changed, "set to ready, due now", "running right now")
        return self.finish(request)
