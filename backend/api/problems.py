"""Errors as RFC 9457 problem details with a stable machine ``code``.

Services raise ``DomainError`` (or a subclass) with a code from ``PROBLEMS``; the edges
turn it into ``application/problem+json`` (HTTP) or an error frame (WebSocket). DRF's own
exceptions and Django's 404/405/500 go through the same shape.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions as drf_exc
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

logger = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"

#: code -> (HTTP status, title). The catalogue of every error the API can answer with.
PROBLEMS: dict[str, tuple[int, str]] = {
    "validation_error": (400, "The request has invalid fields"),
    "parse_error": (400, "The request body could not be parsed"),
    "bad_request": (400, "The request was refused as malformed"),
    "idempotency_key_invalid": (400, "The Idempotency-Key header is malformed"),
    "not_authenticated": (401, "Authentication is required"),
    "authentication_failed": (401, "The credentials are invalid"),
    "token_expired": (401, "The token has expired"),
    "token_revoked": (401, "The token has been revoked"),
    "otp_invalid": (400, "The one-time code is wrong or expired"),
    "second_factor_required": (401, "A second factor is required"),
    "totp_invalid": (401, "The authenticator code is wrong"),
    "totp_not_enrolled": (403, "No authenticator is enrolled for this account"),
    "permission_denied": (403, "You may not do this"),
    "not_found": (404, "Not found"),
    "method_not_allowed": (405, "Method not allowed"),
    "not_acceptable": (406, "Not acceptable"),
    "conflict": (409, "The request conflicts with the current state"),
    "idempotency_key_in_progress": (409, "A request with this Idempotency-Key is in progress"),
    "payload_too_large": (413, "The request body is too large"),
    "unsupported_media_type": (415, "Unsupported media type"),
    "idempotency_key_reused": (422, "The Idempotency-Key was used with a different request"),
    "throttled": (429, "Too many requests"),
    "otp_attempts_exceeded": (429, "Too many wrong codes; request a new one"),
    "account_locked": (429, "Too many failed sign-ins; try again later"),
    "internal_error": (500, "Internal server error"),
    "service_unavailable": (503, "Service unavailable"),
    "sms_unavailable": (503, "The text message could not be sent"),
}


#: RFC 9457 members and ours that an ``extra`` may never replace.
_CORE_MEMBERS = frozenset({"type", "title", "status", "detail", "code", "instance", "errors"})


def problem_type(code: str) -> str:
    return f"/problems/{code}"


class DomainError(Exception):
    """A business rule refused the request. ``code`` is stable and documented."""

    def __init__(
        self,
        code: str,
        detail: str = "",
        *,
        status: int | None = None,
        errors: dict[str, list[str]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        if status is None:
            if code not in PROBLEMS:
                raise ValueError(f"unknown problem code {code!r}: add it to PROBLEMS")
            status = PROBLEMS[code][0]
        self.code = code
        self.status = status
        self.detail = detail or PROBLEMS.get(code, (status, code))[1]
        self.errors = errors
        self.extra = extra or {}
        super().__init__(f"{code}: {self.detail}")


def register_problem(code: str, status: int, title: str) -> None:
    """Apps add their codes at import time (``prescriptions`` adds ``not_reviewed``...)."""
    existing = PROBLEMS.get(code)
    if existing is not None and existing != (status, title):
        raise ValueError(f"problem code {code!r} already registered as {existing}")
    PROBLEMS[code] = (status, title)


def problem_body(
    code: str,
    *,
    status: int | None = None,
    detail: str = "",
    errors: dict[str, Any] | None = None,
    instance: str = "",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    known_status, title = PROBLEMS.get(code, (status or 500, code.replace("_", " ")))
    body: dict[str, Any] = {
        "type": problem_type(code),
        "title": title,
        "status": status or known_status,
        "detail": detail or title,
        "code": code,
    }
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = errors
    if extra:
        body.update({k: v for k, v in extra.items() if k not in _CORE_MEMBERS})
    return body


def problem_response(code: str, request: HttpRequest | None = None, **kwargs: Any) -> JsonResponse:
    body = problem_body(code, instance=request.path if request is not None else "", **kwargs)
    return JsonResponse(
        body,
        status=body["status"],
        content_type=PROBLEM_CONTENT_TYPE,
        json_dumps_params={"ensure_ascii": False},
    )


def _flatten_errors(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested ValidationError detail → {"field.sub": ["message", ...]}."""
    out: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = "non_field_errors" if key == "non_field_errors" and not prefix else key
            out.update(_flatten_errors(value, f"{prefix}.{name}" if prefix else str(name)))
    elif isinstance(detail, list) and detail and all(isinstance(v, str) for v in detail):
        out[prefix or "non_field_errors"] = [str(v) for v in detail]
    elif isinstance(detail, list):
        for i, value in enumerate(detail):
            if value:
                out.update(_flatten_errors(value, f"{prefix}.{i}" if prefix else str(i)))
    else:
        out[prefix or "non_field_errors"] = [str(detail)]
    return out


_DRF_CODES: list[tuple[type[Exception], str]] = [
    (drf_exc.ParseError, "parse_error"),
    (drf_exc.NotAuthenticated, "not_authenticated"),
    (drf_exc.AuthenticationFailed, "authentication_failed"),
    (drf_exc.PermissionDenied, "permission_denied"),
    (drf_exc.NotFound, "not_found"),
    (drf_exc.MethodNotAllowed, "method_not_allowed"),
    (drf_exc.NotAcceptable, "not_acceptable"),
    (drf_exc.UnsupportedMediaType, "unsupported_media_type"),
    (drf_exc.Throttled, "throttled"),
]


def problem_exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """DRF's EXCEPTION_HANDLER: every error leaves as problem+json."""
    request = context.get("request")
    instance = request.path if request is not None else ""
    headers: dict[str, str] = {}
    if isinstance(exc, DomainError):
        body = problem_body(
            exc.code,
            status=exc.status,
            detail=exc.detail,
            errors=exc.errors,
            instance=instance,
            extra=exc.extra,
        )
    elif isinstance(exc, drf_exc.ValidationError):
        body = problem_body(
            "validation_error",
            instance=instance,
            errors=_flatten_errors(exc.detail),
            detail="One or more fields are invalid.",
        )
    elif isinstance(exc, RequestDataTooBig):
        body = problem_body("payload_too_large", instance=instance)
    elif isinstance(exc, SuspiciousOperation):
        logger.warning("suspicious request on %s: %s", instance, exc)
        body = problem_body("bad_request", instance=instance)
    elif isinstance(exc, Http404):
        body = problem_body("not_found", instance=instance)
    elif isinstance(exc, DjangoPermissionDenied):
        body = problem_body("permission_denied", instance=instance)
    elif isinstance(exc, drf_exc.APIException):
        code = next((c for cls, c in _DRF_CODES if isinstance(exc, cls)), None)
        detail = exc.detail if isinstance(exc.detail, str) else ""
        if isinstance(exc, drf_exc.AuthenticationFailed | drf_exc.NotAuthenticated):
            # An authentication failure may carry its own precise code.
            own = exc.get_codes()
            if isinstance(own, str) and own in PROBLEMS and PROBLEMS[own][0] == 401:
                code = own
        wait = getattr(exc, "wait", None)
        if isinstance(exc, drf_exc.Throttled) and wait is not None:
            headers["Retry-After"] = str(int(wait) + 1)
        body = problem_body(
            code or "internal_error", status=exc.status_code, detail=str(detail), instance=instance
        )
        auth_header = getattr(exc, "auth_header", None)
        if auth_header:
            headers["WWW-Authenticate"] = auth_header
    else:
        error_id = uuid.uuid4().hex
        logger.exception("unhandled error %s on %s", error_id, instance)
        body = problem_body(
            "internal_error",
            instance=instance,
            detail=f"An unexpected error occurred; quote error id {error_id} to support.",
            extra={"error_id": error_id},
        )
    if body["status"] == 401 and "WWW-Authenticate" not in headers:
        headers["WWW-Authenticate"] = 'Bearer realm="api"'
    retry_after = body.get("retry_after")
    if "Retry-After" not in headers and retry_after is not None:  # 429, or a 403 lockout
        headers["Retry-After"] = str(retry_after)
    return ProblemResponse(body, status=body["status"], headers=headers)


class ProblemResponse(Response):
    """A DRF response that is always rendered as JSON, whatever renderer the view's
    content negotiation chose (the schema view would otherwise render an error as YAML)."""

    def __init__(self, data: dict[str, Any], status: int, headers: dict[str, str]) -> None:
        super().__init__(data, status=status, headers=headers, content_type=PROBLEM_CONTENT_TYPE)

    @property
    def rendered_content(self) -> bytes:  # type: ignore[override]
        self.accepted_renderer = JSONRenderer()
        self.accepted_media_type = PROBLEM_CONTENT_TYPE
        self.renderer_context = getattr(self, "renderer_context", None) or {}
        content: bytes = super().rendered_content
        return content
