"""Who may use the console's API: staff roles only (patients use the mobile API)."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from backend.identity.services import CONSOLE_ROLES


class IsConsoleUser(BasePermission):
    message = "The console is for hospital, pharmacy and regulator staff."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and getattr(user, "role", None) in CONSOLE_ROLES)


class IsPractitioner(BasePermission):
    message = "This is for doctors and pharmacists."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        return bool(
            user
            and user.is_authenticated
            and getattr(user, "role", None) in ("doctor", "pharmacist")
        )
