"""Administration of payments: merchant and insurance connections (from onboarding), and
read-only views of orders, refunds, the ledger, notifications and reconciliations. Money
changes only through the services; the one action retries a refund that failed."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from payments.models import (
    GatewayConnection,
    InsuranceConnection,
    LedgerEntry,
    NotificationLog,
    Order,
    OrderEvent,
    Reconciliation,
    Refund,
    RefundStatus,
)
from payments.services import refund_execute


class ReadOnly:
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(GatewayConnection)
class GatewayConnectionAdmin(admin.ModelAdmin[GatewayConnection]):
    list_display = ("hospital", "channel", "mchid", "base_url", "enabled")
    exclude = ("signing_secret", "api_v3_key")  # set from the secret store, never shown


@admin.register(InsuranceConnection)
class InsuranceConnectionAdmin(admin.ModelAdmin[InsuranceConnection]):
    list_display = ("hospital", "paasid", "fixmedins_code", "base_url", "enabled")
    exclude = ("secret",)


class OrderEventInline(ReadOnly, admin.TabularInline[OrderEvent, Order]):
    model = OrderEvent
    fields = ("created_at", "action", "from_status", "to_status", "reason", "data")
    readonly_fields = fields
    extra = 0


class LedgerInline(ReadOnly, admin.TabularInline[LedgerEntry, Order]):
    model = LedgerEntry
    fields = ("occurred_at", "kind", "channel", "amount", "reference", "our_reference")
    readonly_fields = fields
    extra = 0


@admin.register(Order)
class OrderAdmin(ReadOnly, admin.ModelAdmin[Order]):
    list_display = (
        "created_at",
        "kind",
        "hospital",
        "status",
        "total",
        "channel",
        "insurance_fund",
        "insurance_account",
        "self_pay",
        "refunded",
    )
    list_filter = ("status", "kind", "channel", "hospital")
    search_fields = ("id", "subject_id", "attempts__out_trade_no")
    inlines = [OrderEventInline, LedgerInline]


@admin.register(Refund)
class RefundAdmin(ReadOnly, admin.ModelAdmin[Refund]):
    list_display = ("created_at", "order", "reason", "amount", "status", "attempts", "last_error")
    list_filter = ("status", "reason")
    search_fields = ("out_refund_no", "refund_id", "order__id")
    actions = ["retry"]

    @admin.action(description="Retry the selected refunds now")
    def retry(self, request: HttpRequest, queryset: QuerySet[Refund]) -> None:
        outcomes = [
            refund_execute(refund_id=refund.pk)
            for refund in queryset.exclude(status=RefundStatus.SUCCEEDED)
        ]
        messages.info(request, f"Retried {len(outcomes)} refund(s): {', '.join(outcomes) or '-'}.")


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnly, admin.ModelAdmin[LedgerEntry]):
    list_display = ("occurred_at", "order", "kind", "channel", "amount", "our_reference")
    list_filter = ("kind", "channel")
    search_fields = ("reference", "our_reference", "order__id")


@admin.register(NotificationLog)
class NotificationLogAdmin(ReadOnly, admin.ModelAdmin[NotificationLog]):
    list_display = ("received_at", "channel", "event_type", "outcome", "detail")
    list_filter = ("outcome", "channel", "event_type")


@admin.register(Reconciliation)
class ReconciliationAdmin(ReadOnly, admin.ModelAdmin[Reconciliation]):
    list_display = (
        "bill_date",
        "hospital",
        "channel",
        "bill_rows",
        "ledger_rows",
        "differences_count",
    )
    list_filter = ("hospital", "channel")
    readonly_fields = (
        "hospital",
        "channel",
        "bill_date",
        "ran_at",
        "bill_rows",
        "ledger_rows",
        "differences",
    )

    @admin.display(description="differences")
    def differences_count(self, obj: Reconciliation) -> int:
        return len(obj.differences)
