"""The gateways' side of payments: ``POST /api/payments/v1/notify/{channel}``."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from payments.services import notification_receive


class NotifyApi(APIView):
    """The gateway's asynchronous result. Authenticated by the gateway's signature over
    the raw body (nothing else), so no session, token or CSRF applies here."""

    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="payments_notify",
        request=OpenApiTypes.OBJECT,
        responses={204: None},
        description="A payment or refund result from a gateway (CONTRACT section 8).",
    )
    def post(self, request: Request, channel: str) -> Response:
        body = request.body  # the raw bytes: verified before anything is parsed
        answer = notification_receive(channel=channel, headers=dict(request.headers), body=body)
        return Response(status=answer.status)
