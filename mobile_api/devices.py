"""Push-notification tokens of the patient's devices."""

from __future__ import annotations

from uuid import UUID

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from backend.api.views import ApiView, ListApiView
from backend.identity.authentication import request_account
from backend.notifications.models import Device, Platform
from backend.notifications.services import device_register, device_unregister


class DeviceOutput(serializers.ModelSerializer):  # type: ignore[type-arg]
    class Meta:
        model = Device
        fields = ["id", "platform", "created_at", "last_seen_at"]


class DeviceInput(serializers.Serializer):  # type: ignore[type-arg]
    platform = serializers.ChoiceField(choices=Platform.values)
    token = serializers.CharField(max_length=500)


class DevicesApi(ListApiView):
    serializer_class = DeviceOutput

    def get_queryset(self) -> QuerySet[Device]:
        return Device.objects.filter(user=request_account(self.request))

    @extend_schema(
        operation_id="devices_register", request=DeviceInput, responses={201: DeviceOutput}
    )
    def post(self, request: Request) -> Response:
        data = DeviceInput(data=request.data)
        data.is_valid(raise_exception=True)
        device = device_register(user=request_account(request), **data.validated_data)
        return Response(DeviceOutput(device).data, status=201)


class DeviceDetailApi(ApiView):
    @extend_schema(operation_id="devices_unregister", responses={204: None})
    def delete(self, request: Request, device_id: UUID) -> Response:
        device_unregister(user=request_account(request), device_id=device_id)
        return Response(status=204)
