"""Where a patient can go: hospitals, their departments, and doctors with availability."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers

from backend.api.pagination import CursorPage
from backend.api.params import query_uuid
from backend.api.views import ListApiView
from backend.organisations.models import (
    Department,
    FilingStatus,
    Hospital,
    Practitioner,
    PractitionerKind,
)


class ByName(CursorPage):
    ordering = ("name", "id")


class HospitalOutput(serializers.ModelSerializer):  # type: ignore[type-arg]
    province = serializers.CharField(source="province.name")

    class Meta:
        model = Hospital
        fields = [
            "id",
            "name",
            "province",
            "internet_hospital_licence_number",
            "internet_hospital_licence_valid_until",
        ]


class DepartmentOutput(serializers.ModelSerializer):  # type: ignore[type-arg]
    class Meta:
        model = Department
        fields = ["id", "hospital", "code", "name"]


class DoctorOutput(serializers.ModelSerializer):  # type: ignore[type-arg]
    name = serializers.CharField(source="user.display_name")
    available = serializers.SerializerMethodField(
        help_text="On duty now and qualified to take consultations"
    )

    class Meta:
        model = Practitioner
        fields = ["id", "name", "title", "hospital", "department", "available"]

    def get_available(self, obj: Practitioner) -> bool:
        return bool(obj.on_duty and obj.licence_valid_until >= timezone.localdate())


class HospitalsApi(ListApiView):
    serializer_class = HospitalOutput
    pagination_class = ByName

    def get_queryset(self) -> QuerySet[Hospital]:
        return Hospital.objects.select_related("province").filter(
            practice_licence_valid_until__gte=timezone.localdate()
        )


class DepartmentsApi(ListApiView):
    serializer_class = DepartmentOutput
    pagination_class = ByName

    @extend_schema(parameters=[OpenApiParameter("hospital", str, description="Hospital id")])
    def get(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        return super().get(request, *args, **kwargs)

    def get_queryset(self) -> QuerySet[Department]:
        qs = Department.objects.filter(is_active=True)
        hospital = query_uuid(self.request, "hospital")
        return qs.filter(hospital_id=hospital) if hospital else qs


class DoctorsApi(ListApiView):
    serializer_class = DoctorOutput

    class pagination_class(CursorPage):  # noqa: N801
        ordering = ("practice_certificate_number",)

    @extend_schema(
        parameters=[
            OpenApiParameter("hospital", str, description="Hospital id"),
            OpenApiParameter("department", str, description="Department id"),
            OpenApiParameter("available", bool, description="Only doctors available now"),
        ]
    )
    def get(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        return super().get(request, *args, **kwargs)

    def get_queryset(self) -> QuerySet[Practitioner]:
        qs = Practitioner.objects.select_related("user").filter(
            kind=PractitionerKind.DOCTOR, filing_status=FilingStatus.FILED, user__is_active=True
        )
        hospital = query_uuid(self.request, "hospital")
        department = query_uuid(self.request, "department")
        if hospital:
            qs = qs.filter(hospital_id=hospital)
        if department:
            qs = qs.filter(department_id=department)
        if (self.request.query_params.get("available") or "").lower() in ("1", "true", "yes"):
            qs = qs.filter(on_duty=True, licence_valid_until__gte=timezone.localdate())
        return qs
