"""``GET /problems/{code}``: what each problem ``type`` URI means."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from backend.api.problems import PROBLEMS, problem_response, problem_type


@require_GET
def problem_catalogue(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {
            "problems": [
                {"code": code, "status": status, "title": title, "type": problem_type(code)}
                for code, (status, title) in sorted(PROBLEMS.items())
            ]
        },
        json_dumps_params={"ensure_ascii": False},
    )


@require_GET
def problem_detail(request: HttpRequest, code: str) -> JsonResponse:
    if code not in PROBLEMS:
        return problem_response("not_found", request, detail=f"No problem type {code!r}.")
    status, title = PROBLEMS[code]
    return JsonResponse(
        {"code": code, "status": status, "title": title, "type": problem_type(code)}
    )
