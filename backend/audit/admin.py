from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from backend.audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin[AuditEvent]):
    """Read-only: the trail is append-only (the database refuses edits too)."""

    list_display = (
        "seq",
        "occurred_at",
        "actor_repr",
        "actor_role",
        "action",
        "object_type",
        "object_id",
        "ip",
    )
    list_filter = ("action", "actor_role", "object_type")
    search_fields = ("object_id", "actor_id", "action")
    date_hierarchy = "occurred_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
