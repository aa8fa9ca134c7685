"""The hospital administrator's view of payments in the console's API: reconciliation
runs (and starting one for a day), and the payment alerts. Scoped to their hospital."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response

from backend.api.pagination import CursorPage
from backend.api.problems import DomainError
from backend.api.views import ListApiView
from backend.organisations.models import Hospital
from payments.channels import ChannelError
from payments.models import Reconciliation
from payments.services import reconcile


class IsHospitalAdministrator(BasePermission):
    message = "This is for the hospital's administrators."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        return bool(
            user
            and user.is_authenticated
            and getattr(user, "role", None) == "administrator"
            and hasattr(user, "hospital_administrator")
        )


def _hospital(request: Request) -> Hospital:
    return request.user.hospital_administrator.hospital  # type: ignore[union-attr]


def reconciliation_state(run: Reconciliation) -> dict[str, Any]:
    return {
        "id": run.pk,
        "channel": run.channel,
        "bill_date": run.bill_date.isoformat(),
        "ran_at": run.ran_at.isoformat(),
        "bill_rows": run.bill_rows,
        "ledger_rows": run.ledger_rows,
        "clean": run.is_clean,
        "differences": run.differences,
    }


class DifferenceOutput(serializers.Serializer):  # type: ignore[type-arg]
    kind = serializers.ChoiceField(choices=["missing_here", "missing_there", "amount_differs"])
    type = serializers.ChoiceField(choices=["PAY", "REFUND"])
    our_reference = serializers.CharField(help_text="out_trade_no or out_refund_no")
    order = serializers.CharField(allow_blank=True)
    bill_amount = serializers.IntegerField(allow_null=True, help_text="fen, signed")
    ledger_amount = serializers.IntegerField(allow_null=True, help_text="fen, signed")


class ReconciliationOutput(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.IntegerField()
    channel = serializers.CharField()
    bill_date = serializers.DateField()
    ran_at = serializers.DateTimeField()
    bill_rows = serializers.IntegerField()
    ledger_rows = serializers.IntegerField()
    clean = serializers.BooleanField()
    differences = DifferenceOutput(many=True)


class ReconciliationSerializer(serializers.BaseSerializer):  # type: ignore[type-arg]
    def to_representation(self, instance: Reconciliation) -> dict[str, Any]:
        return reconciliation_state(instance)


class ReconcileInput(serializers.Serializer):  # type: ignore[type-arg]
    date = serializers.DateField(help_text="the bill's day, Asia/Shanghai")


class Newest(CursorPage):
    ordering = ("-ran_at", "-id")


class ReconciliationsApi(ListApiView):
    permission_classes = [IsHospitalAdministrator]
    serializer_class = ReconciliationSerializer
    pagination_class = Newest

    def get_queryset(self) -> QuerySet[Reconciliation]:
        qs = Reconciliation.objects.filter(hospital=_hospital(self.request))
        day = self.request.query_params.get("date")
        if day:
            try:
                qs = qs.filter(bill_date=dt.date.fromisoformat(day))
            except ValueError as exc:
                raise DomainError(
                    "validation_error", "Bad date.", errors={"date": ["YYYY-MM-DD"]}
                ) from exc
        return qs

    @extend_schema(
        operation_id="console_payments_reconciliations",
        parameters=[OpenApiParameter("date", str, description="YYYY-MM-DD")],
        responses={200: ReconciliationOutput(many=True)},
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(
        operation_id="console_payments_reconcile",
        request=ReconcileInput,
        responses={201: ReconciliationOutput(many=True)},
        description="Fetch each gateway's bill for the day and compare it with the ledger.",
    )
    def post(self, request: Request) -> Response:
        data = ReconcileInput(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            runs = reconcile(day=data.validated_data["date"], hospital=_hospital(request))
        except ChannelError as exc:
            raise DomainError(
                "channel_unavailable", f"A bill could not be fetched: {exc}", status=503
            ) from exc
        return Response([reconciliation_state(r) for r in runs], status=201)
