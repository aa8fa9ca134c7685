"""Patients' sign-in (phone OTP → JWT) and their account."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import AnonRateThrottle

from backend.api.views import ApiView
from backend.audit.services import RequestMeta
from backend.identity.authentication import request_account
from backend.identity.selectors import account_summary
from backend.identity.services import account_update, otp_request, patient_login, tokens_refresh
from mobile_api.serializers import (
    MeOutput,
    MePatchInput,
    OtpRequestInput,
    OtpRequestOutput,
    RefreshInput,
    TokenInput,
    TokenOutput,
)


class OtpIpThrottle(AnonRateThrottle):
    scope = "otp_ip"


class TokenIpThrottle(AnonRateThrottle):
    scope = "token_ip"


class OtpApi(ApiView):
    idempotency_exempt = True  # issues or ends credentials: never stored
    permission_classes = [AllowAny]
    authentication_classes: list[type] = []
    throttle_classes = [OtpIpThrottle]

    @extend_schema(
        operation_id="auth_otp",
        request=OtpRequestInput,
        responses={202: OtpRequestOutput},
        examples=[
            OpenApiExample("Request a code", value={"phone": "13800138000"}, request_only=True)
        ],
    )
    def post(self, request: Request) -> Response:
        data = OtpRequestInput(data=request.data)
        data.is_valid(raise_exception=True)
        sent = otp_request(
            phone=data.validated_data["phone"], meta=RequestMeta.from_request(request)
        )
        return Response(OtpRequestOutput(sent).data, status=202)


class TokenApi(ApiView):
    idempotency_exempt = True  # issues or ends credentials: never stored
    permission_classes = [AllowAny]
    authentication_classes: list[type] = []
    throttle_classes = [TokenIpThrottle]

    @extend_schema(
        operation_id="auth_token",
        request=TokenInput,
        responses={200: TokenOutput},
        examples=[
            OpenApiExample(
                "Sign in", value={"phone": "13800138000", "code": "123456"}, request_only=True
            )
        ],
    )
    def post(self, request: Request) -> Response:
        data = TokenInput(data=request.data)
        data.is_valid(raise_exception=True)
        pair = patient_login(
            phone=data.validated_data["phone"],
            code=data.validated_data["code"],
            meta=RequestMeta.from_request(request),
        )
        return Response(TokenOutput(pair).data)


class RefreshApi(ApiView):
    idempotency_exempt = True  # issues or ends credentials: never stored
    permission_classes = [AllowAny]
    authentication_classes: list[type] = []
    throttle_classes = [TokenIpThrottle]

    @extend_schema(operation_id="auth_refresh", request=RefreshInput, responses={200: TokenOutput})
    def post(self, request: Request) -> Response:
        data = RefreshInput(data=request.data)
        data.is_valid(raise_exception=True)
        pair = tokens_refresh(refresh=data.validated_data["refresh"])
        return Response(TokenOutput(pair).data)


class MeApi(ApiView):
    @extend_schema(operation_id="me_retrieve", responses={200: MeOutput})
    def get(self, request: Request) -> Response:
        user = request_account(request)
        return Response(MeOutput(account_summary(user=user)).data)

    @extend_schema(operation_id="me_update", request=MePatchInput, responses={200: MeOutput})
    def patch(self, request: Request) -> Response:
        data = MePatchInput(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        user = account_update(
            user=request_account(request),
            meta=RequestMeta.from_request(request),
            **data.validated_data,
        )
        return Response(MeOutput(account_summary(user=user)).data)
