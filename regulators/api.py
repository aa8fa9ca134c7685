"""The regulator side (CONTRACT section 7): officials of a province read the records the
platform received from its hospitals, the alerts, and the monitoring indicators."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response

from backend.api.pagination import CursorPage
from backend.api.params import query_uuid
from backend.api.problems import DomainError
from backend.api.tickets import WsTicketOutput, ws_ticket_response
from backend.api.views import ApiView, AuditedListApiView, ListApiView
from backend.identity.authentication import request_account
from backend.identity.models import Role
from regulators.models import Alert, AlertKind, OutboxRecord
from regulators.selectors import alerts_of, indicators, province_of_official, received_records
from regulators.services import feed_item


class IsRegulator(BasePermission):
    message = "This is for officials of a provincial regulator."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        return bool(
            user and user.is_authenticated and getattr(user, "role", None) == Role.REGULATOR
        )


def _when(request: Request, name: str) -> dt.datetime | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        value = dt.datetime.fromisoformat(raw)
    except ValueError:
        try:
            value = dt.datetime.combine(dt.date.fromisoformat(raw), dt.time.min)
        except ValueError:
            raise DomainError(
                "validation_error",
                f"{name} is not a date or an RFC 3339 time.",
                errors={name: ["e.g. 2026-11-01 or 2026-11-01T00:00:00+08:00"]},
            ) from None
    return value if value.tzinfo else timezone.make_aware(value)


_FILTERS = [
    OpenApiParameter("hospital", OpenApiTypes.UUID),
    OpenApiParameter("from", OpenApiTypes.DATETIME, description="inclusive; a date or a time"),
    OpenApiParameter("to", OpenApiTypes.DATETIME, description="exclusive; a date or a time"),
]


class ByFeedSeq(CursorPage):
    ordering = ("feed_seq", "id")


class RecordOutput(serializers.Serializer):  # type: ignore[type-arg]
    seq = serializers.IntegerField()
    record_id = serializers.UUIDField()
    record_type = serializers.CharField()
    hospital = serializers.UUIDField()
    hospital_code = serializers.CharField()
    occurred_at = serializers.DateTimeField()
    acknowledged_at = serializers.DateTimeField()
    delivery_latency_seconds = serializers.FloatField()
    payload = serializers.DictField()


class RecordSerializer(serializers.BaseSerializer):  # type: ignore[type-arg]
    def to_representation(self, instance: OutboxRecord) -> dict[str, Any]:
        return feed_item(instance)


class RecordsApi(AuditedListApiView):
    """The records carry patients' names and ID numbers: each page an official reads is
    recorded."""

    permission_classes = [IsRegulator]
    audit_object_type = "regulator_record"
    audit_id_key = "record_id"
    serializer_class = RecordSerializer
    pagination_class = ByFeedSeq

    def get_queryset(self) -> QuerySet[OutboxRecord]:
        return received_records(
            province=province_of_official(user=request_account(self.request)),
            record_type=self.request.query_params.get("record_type"),
            hospital=query_uuid(self.request, "hospital"),
            since=_when(self.request, "from"),
            until=_when(self.request, "to"),
        )

    @extend_schema(
        operation_id="regulator_records_list",
        parameters=[
            OpenApiParameter("record_type", str, description="a type or a prefix: consultation"),
            *_FILTERS,
        ],
        responses={200: RecordOutput(many=True)},
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class AlertOutput(serializers.ModelSerializer):  # type: ignore[type-arg]
    hospital_name = serializers.CharField(source="hospital.name")

    class Meta:
        model = Alert
        fields = [
            "id",
            "kind",
            "rule",
            "hospital",
            "hospital_name",
            "subject_type",
            "subject_id",
            "details",
            "created_at",
        ]


class Newest(CursorPage):
    ordering = ("-created_at", "id")


class AlertsApi(ListApiView):
    permission_classes = [IsRegulator]
    serializer_class = AlertOutput
    pagination_class = Newest

    def get_queryset(self) -> QuerySet[Alert]:
        return alerts_of(
            province=province_of_official(user=request_account(self.request)),
            kind=self.request.query_params.get("kind"),
            hospital=query_uuid(self.request, "hospital"),
            since=_when(self.request, "from"),
            until=_when(self.request, "to"),
        )

    @extend_schema(
        operation_id="regulator_alerts_list",
        parameters=[OpenApiParameter("kind", str, enum=AlertKind.values), *_FILTERS],
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class IndicatorsOutput(serializers.Serializer):  # type: ignore[type-arg]
    results = serializers.ListField(child=serializers.DictField())


class IndicatorsApi(ApiView):
    """The monitoring indicators of each hospital (or each doctor with ``by=doctor``)
    over a period (default: the last 30 days), computed from the records received."""

    permission_classes = [IsRegulator]

    @extend_schema(
        operation_id="regulator_indicators",
        parameters=[OpenApiParameter("by", str, enum=["hospital", "doctor"]), *_FILTERS],
        responses={200: IndicatorsOutput},
    )
    def get(self, request: Request) -> Response:
        until = _when(request, "to") or timezone.now()
        since = _when(request, "from") or until - dt.timedelta(days=30)
        by = request.query_params.get("by", "hospital")
        if by not in ("hospital", "doctor"):
            raise DomainError(
                "validation_error",
                "by is hospital or doctor.",
                errors={"by": ["hospital or doctor"]},
            )
        return Response(
            {
                "results": indicators(
                    province=province_of_official(user=request_account(request)),
                    since=since,
                    until=until,
                    hospital=query_uuid(request, "hospital"),
                    by=by,
                )
            }
        )


class FeedTicketApi(ApiView):
    permission_classes = [IsRegulator]

    @extend_schema(
        operation_id="regulator_ws_ticket", request=None, responses={201: WsTicketOutput}
    )
    def post(self, request: Request) -> Response:
        province_of_official(user=request_account(request))
        return ws_ticket_response(request, path="/ws/regulator/feed/")
