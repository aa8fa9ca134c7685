"""Give every non-HTML error on the API paths the problem+json shape.

DRF views already answer with problem+json (``problems.problem_exception_handler``).
This middleware covers what happens outside DRF: an unknown URL, a method that a plain
Django view refuses, and an exception that escaped a view.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse

from backend.api.problems import PROBLEM_CONTENT_TYPE, problem_response

logger = logging.getLogger(__name__)

API_PREFIXES = ("/api/", "/problems/")
API_PATHS = frozenset({"/healthz", "/problems"})

_STATUS_CODES = {
    400: "bad_request",
    401: "not_authenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "throttled",
    500: "internal_error",
}


def is_api_path(path: str) -> bool:
    return path in API_PATHS or path.startswith(API_PREFIXES)


class ProblemJsonMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if not is_api_path(request.path) or response.status_code < 400:
            return response
        content_type = response.get("Content-Type", "")
        if content_type.startswith((PROBLEM_CONTENT_TYPE, "application/json")):
            return response
        code = _STATUS_CODES.get(response.status_code, "internal_error")
        converted = problem_response(code, request, status=response.status_code)
        if response.status_code == 405 and response.has_header("Allow"):
            converted["Allow"] = response["Allow"]
        return converted

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not is_api_path(request.path):
            return None
        if isinstance(exception, RequestDataTooBig):
            return problem_response("payload_too_large", request)
        if isinstance(exception, Http404 | PermissionDenied | SuspiciousOperation):
            return None  # Django answers 404/403/400; __call__ gives it the problem shape
        error_id = uuid.uuid4().hex
        logger.exception("unhandled error %s on %s", error_id, request.path)
        return problem_response(
            "internal_error",
            request,
            detail=f"An unexpected error occurred; quote error id {error_id} to support.",
            extra={"error_id": error_id},
        )


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """CSRF_FAILURE_VIEW: the console's API calls get a problem, not an HTML page."""
    if is_api_path(request.path):
        return problem_response(
            "permission_denied", request, detail="CSRF check failed: send the X-CSRFToken header."
        )
    from django.views.csrf import csrf_failure as default

    return default(request, reason=reason)
