"""OpenAPI generation tweaks."""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema as BaseAutoSchema
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import serializers

from backend.api.problems import PROBLEM_CONTENT_TYPE, PROBLEMS


class AutoSchema(BaseAutoSchema):
    def get_operation_id(self) -> str:
        """Views mounted under both edges get the console's prefix on the console side, so
        every operation id stays unique and stable."""
        operation_id: str = super().get_operation_id()
        if self.path.startswith("/api/console/") and not operation_id.startswith("console_"):
            return f"console_{operation_id}"
        return operation_id


#: RFC 9457 problem details, as every error of this API is answered (a declared class
#: cannot have an ``errors`` field: DRF serializers have an ``errors`` property).
ProblemOutput = inline_serializer(
    name="Problem",
    fields={
        "type": serializers.CharField(help_text="`/problems/{code}`: what the code means"),
        "title": serializers.CharField(),
        "status": serializers.IntegerField(),
        "detail": serializers.CharField(),
        "code": serializers.CharField(help_text="stable; clients branch on it"),
        "instance": serializers.CharField(required=False, help_text="the request path"),
        "errors": serializers.DictField(
            child=serializers.ListField(child=serializers.CharField()),
            required=False,
            help_text="per field (dotted path), for validation errors",
        ),
    },
)


def problem_responses(*codes: str) -> dict[Any, OpenApiResponse]:
    """The documented error answers of an operation, for ``extend_schema(responses=...)``:
    one problem+json response per status, naming each code it may carry. Codes must be
    registered (``backend.api.problems.PROBLEMS``) before the view module is imported."""
    by_status: dict[int, list[str]] = {}
    for code in dict.fromkeys(codes):  # each once, in the order given
        if code not in PROBLEMS:
            raise ValueError(f"unknown problem code {code!r}")
        by_status.setdefault(PROBLEMS[code][0], []).append(code)
    return {
        (status, PROBLEM_CONTENT_TYPE): OpenApiResponse(
            ProblemOutput,
            description="; ".join(f"`{code}`: {PROBLEMS[code][1]}" for code in listed),
        )
        for status, listed in sorted(by_status.items())
    }
