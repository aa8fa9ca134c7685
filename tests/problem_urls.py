"""A URLconf for tests only: the real routes plus views that blow up.

Used with ``@pytest.mark.urls("tests.problem_urls")`` to prove that an unexpected
exception on an API path leaves as a 500 ``internal_error`` problem that leaks nothing.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.urls import path
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from backend.api.views import ApiView
from backend.urls import handler404, handler500
from backend.urls import urlpatterns as product_urlpatterns

SECRET = "secret internals"


class BoomApi(ApiView):
    """A DRF view whose handlers raise an unexpected exception."""

    permission_classes = [AllowAny]
    authentication_classes: list[Any] = []

    def get(self, request: Request) -> Response:
        raise RuntimeError(SECRET)

    def post(self, request: Request) -> Response:
        raise RuntimeError(SECRET)


def boom_plain(request: HttpRequest) -> HttpResponse:
    """A plain Django view (no DRF) that raises an unexpected exception."""
    raise RuntimeError(SECRET)


urlpatterns = [
    path("api/test/boom/drf", BoomApi.as_view(), name="test-boom-drf"),
    path("api/test/boom/plain", boom_plain, name="test-boom-plain"),
    *product_urlpatterns,
]

__all__ = ["handler404", "handler500", "urlpatterns"]
