"""Reading query parameters with clear errors instead of database exceptions."""

from __future__ import annotations

import uuid

from rest_framework.request import Request

from backend.api.problems import DomainError


def query_uuid(request: Request, name: str) -> uuid.UUID | None:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return None
    try:
        return uuid.UUID(str(raw))
    except ValueError as exc:
        raise DomainError(
            "validation_error", f"{name} must be a UUID.", errors={name: ["Must be a UUID."]}
        ) from exc
