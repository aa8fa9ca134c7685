from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from backend.identity.models import Role


class IsPatient(BasePermission):
    message = "This part of the API is for patients."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and getattr(user, "role", None) == Role.PATIENT)
