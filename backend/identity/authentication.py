"""DRF authentication classes: patients' JWT, machine clients' API tokens, and the
console's session (with its second factor completed)."""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, SessionAuthentication
from rest_framework.request import Request

from backend.api.problems import DomainError
from backend.identity.models import User
from backend.identity.services import API_TOKEN_SCHEME, access_token_user, api_token_authenticate

#: Session key set once a console user has passed every factor their role needs.
SESSION_VERIFIED = "console_verified"


def request_account(request: Request) -> User:
    """The signed-in account of a request that passed ``IsAuthenticated``."""
    user = request.user
    if not isinstance(user, User):
        raise exceptions.NotAuthenticated()
    return user


def _fail(error: DomainError) -> exceptions.AuthenticationFailed:
    return exceptions.AuthenticationFailed(error.detail, code=error.code)


def _credentials(request: Request, scheme: str) -> str | None:
    header = request.headers.get("Authorization", "")
    if not header:
        return None
    given, _, value = header.partition(" ")
    if given.lower() != scheme.lower():
        return None
    value = value.strip()
    if not value or " " in value:
        raise exceptions.AuthenticationFailed(f"Malformed {scheme} authorization header.")
    return value


class JwtAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[User, dict[str, Any]] | None:
        token = _credentials(request, "Bearer")
        if token is None:
            return None
        try:
            return access_token_user(token=token), {"kind": "jwt"}
        except DomainError as error:
            raise _fail(error) from error

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class ApiTokenAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[User, dict[str, Any]] | None:
        key = _credentials(request, API_TOKEN_SCHEME)
        if key is None:
            return None
        try:
            user, token = api_token_authenticate(key=key)
        except DomainError as error:
            raise _fail(error) from error
        return user, {"kind": "api_token", "token_id": str(token.pk)}

    def authenticate_header(self, request: Request) -> str:
        return f'{API_TOKEN_SCHEME} realm="api"'


class ConsoleSessionAuthentication(SessionAuthentication):
    """A console session counts only once its second factor (if required) is done."""

    def authenticate(self, request: Request) -> tuple[User, None] | None:
        result = super().authenticate(request)
        if result is None:
            return None
        user = result[0]
        if not request._request.session.get(SESSION_VERIFIED):
            return None
        return user, None
