"""Django's 404 and 500 handlers: problem+json on API paths, Django's pages elsewhere."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views import defaults

from backend.api.middleware import is_api_path
from backend.api.problems import problem_response


def not_found(request: HttpRequest, exception: Any = None) -> HttpResponse:
    if is_api_path(request.path):
        return problem_response("not_found", request)
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if is_api_path(request.path):
        return problem_response("internal_error", request)
    return defaults.server_error(request)
