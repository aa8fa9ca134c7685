from __future__ import annotations

from django.contrib import admin

from prescriptions.models import Drug


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
