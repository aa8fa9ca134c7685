from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from prescriptions.models import (
    ControlledDrugAttempt,
    Drug,
    Prescription,
    PrescriptionEvent,
    PrescriptionLine,
)


@admin.register(Drug)
class DrugAdmin(admin.ModelAdmin[Drug]):
    list_display = (
        "code",
        "generic_name",
        "trade_name",
        "specification",
        "rx_class",
        "control_class",
        "unit_price",
        "is_active",
    )
    list_filter = ("control_class", "rx_class", "is_active", "code_system")
    search_fields = ("code", "generic_name", "trade_name")


class _ReadOnly:
    """Prescriptions change only through their lifecycle services, never in the admin."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class LineInline(_ReadOnly, admin.TabularInline[PrescriptionLine, Prescription]):
    model = PrescriptionLine
    fields = (
        "position",
        "drug_code",
        "drug_name",
        "dose",
        "dose_unit",
        "frequency",
        "days",
        "quantity",
        "dispensed_quantity",
    )


class EventInline(_ReadOnly, admin.TabularInline[PrescriptionEvent, Prescription]):
    model = PrescriptionEvent
    fields = ("created_at", "action", "from_status", "to_status", "actor", "pharmacy", "reason")


@admin.register(Prescription)
class PrescriptionAdmin(_ReadOnly, admin.ModelAdmin[Prescription]):
    list_display = ("id", "status", "version", "hospital", "doctor", "issued_at", "valid_until")
    list_filter = ("status", "hospital")
    search_fields = ("id",)
    exclude = ("access_code", "claim_secret", "delivery_address")
    inlines = [LineInline, EventInline]


@admin.register(ControlledDrugAttempt)
class ControlledDrugAttemptAdmin(_ReadOnly, admin.ModelAdmin[ControlledDrugAttempt]):
    list_display = ("created_at", "doctor", "consultation")
