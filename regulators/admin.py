"""Administration of regulator reporting: platform connections, the outbox (pending and
dead letters, with replay) and alerts. Records change only through the services."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from backend.audit.services import RequestMeta
from regulators.models import Alert, OutboxRecord, PlatformConnection, RecordStatus
from regulators.services import record_replay


@admin.register(PlatformConnection)
class PlatformConnectionAdmin(admin.ModelAdmin[PlatformConnection]):
    list_display = ("province", "adapter", "base_url", "app_id", "enabled")


@admin.register(OutboxRecord)
class OutboxRecordAdmin(admin.ModelAdmin[OutboxRecord]):
    list_display = (
        "id",
        "record_type",
        "hospital",
        "status",
        "attempts",
        "created_at",
        "acknowledged_at",
        "dead_code",
        "last_error",
    )
    list_filter = ("status", "record_type", "hospital")
    search_fields = ("record_id", "aggregate_id", "ack_id")
    actions = ["replay"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Replay the selected dead letters (after fixing the cause)")
    def replay(self, request: HttpRequest, queryset: QuerySet[OutboxRecord]) -> None:
        count = 0
        for record in queryset.filter(status=RecordStatus.DEAD):
            record_replay(
                record=record,
                actor=request.user,  # type: ignore[arg-type]
                meta=RequestMeta.from_request(request),
            )
            count += 1
        messages.success(request, f"Replayed {count} record(s).")


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin[Alert]):
    list_display = ("created_at", "kind", "hospital", "rule", "subject_type", "subject_id")
    list_filter = ("kind", "hospital")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
