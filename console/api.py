"""Console sign-in (session + TOTP second factor) and the console WebSocket ticket."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import login, logout
from django.middleware.csrf import get_token
from django.utils.decorators import method_decorator
from django.views.decorators.csrf import csrf_protect, ensure_csrf_cookie
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import SimpleRateThrottle

from backend.api.problems import DomainError
from backend.api.tickets import WsTicketOutput, ws_ticket_response
from backend.api.views import ApiView
from backend.audit.services import RequestMeta, audit_record
from backend.identity.authentication import SESSION_VERIFIED, request_account
from backend.identity.models import User
from backend.identity.selectors import account_summary
from backend.identity.services import (
    console_password_check,
    console_second_factor_check,
)
from backend.identity.sessions import session_refresh
from console.permissions import IsConsoleUser
from console.serializers import LoginInput, LoginOutput, SessionOutput, TotpInput

PENDING_USER = "console_pending_user"
CONSOLE_WS_PATH = "/ws/console/"


class ConsoleLoginThrottle(SimpleRateThrottle):
    """Per client address, whatever credentials the request carries."""

    scope = "console_login"

    def get_cache_key(self, request: Request, view: Any) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


def _complete_login(request: Request, user: User) -> None:
    login(request._request, user, backend="backend.identity.backends.AccountBackend")
    request._request.session[SESSION_VERIFIED] = True
    audit_record(
        action="auth.console_login",
        actor=user,
        object_type="account",
        object_id=user.pk,
        meta=RequestMeta.from_request(request),
    )


@method_decorator(ensure_csrf_cookie, name="dispatch")
class CsrfApi(ApiView):
    """Sets the CSRF cookie the console's scripts send back as ``X-CSRFToken``."""

    permission_classes = [AllowAny]
    authentication_classes: list[Any] = []

    @extend_schema(operation_id="console_csrf", responses={200: dict})
    def get(self, request: Request) -> Response:
        return Response({"csrf_token": get_token(request._request)})


@method_decorator(csrf_protect, name="dispatch")  # no login CSRF: a session is at stake
class LoginApi(ApiView):
    idempotency_exempt = True  # issues or ends credentials: never stored
    permission_classes = [AllowAny]
    authentication_classes: list[Any] = []
    throttle_classes = [ConsoleLoginThrottle]

    @extend_schema(operation_id="console_login", request=LoginInput, responses={200: LoginOutput})
    def post(self, request: Request) -> Response:
        data = LoginInput(data=request.data)
        data.is_valid(raise_exception=True)
        user = console_password_check(
            username=data.validated_data["username"],
            password=data.validated_data["password"],
            meta=RequestMeta.from_request(request),
        )
        session = request._request.session
        session.cycle_key()
        if user.needs_second_factor:
            if not user.totp_secret:
                raise DomainError(
                    "totp_not_enrolled", "Ask an administrator to enrol your authenticator."
                )
            session[PENDING_USER] = str(user.pk)
            return Response({"second_factor_required": True})
        _complete_login(request, user)
        return Response({"second_factor_required": False, "user": account_summary(user=user)})


@method_decorator(csrf_protect, name="dispatch")  # no login CSRF: a session is at stake
class TotpApi(ApiView):
    idempotency_exempt = True  # issues or ends credentials: never stored
    permission_classes = [AllowAny]
    authentication_classes: list[Any] = []
    throttle_classes = [ConsoleLoginThrottle]

    @extend_schema(
        operation_id="console_login_totp",
        request=TotpInput,
        responses={200: LoginOutput, 401: OpenApiResponse(description="totp_invalid")},
    )
    def post(self, request: Request) -> Response:
        data = TotpInput(data=request.data)
        data.is_valid(raise_exception=True)
        pending = request._request.session.get(PENDING_USER)
        user = User.objects.filter(pk=pending, is_active=True).first() if pending else None
        if user is None:
            raise DomainError("not_authenticated", "Sign in with your password first.")
        console_second_factor_check(
            user=user, code=data.validated_data["code"], meta=RequestMeta.from_request(request)
        )
        request._request.session.pop(PENDING_USER, None)
        _complete_login(request, user)
        return Response({"second_factor_required": False, "user": account_summary(user=user)})


@method_decorator(csrf_protect, name="dispatch")
class LogoutApi(ApiView):
    idempotency_exempt = True  # issues or ends credentials: never stored
    permission_classes = [AllowAny]

    @extend_schema(operation_id="console_logout", request=None, responses={204: None})
    def post(self, request: Request) -> Response:
        logout(request._request)
        return Response(status=204)


class SessionApi(ApiView):
    """Who is signed in, and after how long without a request the session ends. Every
    request extends the session (the server writes the new expiry at most every 30
    seconds); this one always writes it, so the console's "stay signed in" calls it."""

    permission_classes = [IsConsoleUser]

    @extend_schema(operation_id="console_session", responses={200: SessionOutput})
    def get(self, request: Request) -> Response:
        session_refresh(request)  # "stay signed in": always a full idle period from now
        return Response(
            {
                "user": account_summary(user=request_account(request)),
                "idle_seconds": settings.SESSION_COOKIE_AGE,
            }
        )


class WsTicketApi(ApiView):
    idempotency_exempt = True  # issues or ends credentials: never stored
    permission_classes = [IsConsoleUser]

    @extend_schema(operation_id="console_ws_ticket", request=None, responses={201: WsTicketOutput})
    def post(self, request: Request) -> Response:
        return ws_ticket_response(request, path=CONSOLE_WS_PATH)
