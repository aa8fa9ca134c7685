"""``GET /healthz``, the OpenAPI schema and its two viewers (CONTRACT §0)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from rest_framework.test import APIClient

from backend.api.problems import PROBLEMS

PROBLEM = "application/problem+json"
SIDECAR = "/static/drf_spectacular_sidecar/"


@pytest.fixture
def local_static(settings: Any) -> None:
    """Serve static files straight from the apps (the production manifest storage needs
    ``collectstatic``, which the test run does not do). WhiteNoise reads its settings
    when a client builds its middleware, so use a client created after this fixture."""
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    settings.WHITENOISE_USE_FINDERS = True


# --- /healthz -----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_healthz_reports_every_check_ok(api: APIClient) -> None:
    response = api.get("/healthz")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert json.loads(response.content) == {
        "status": "ok",
        "checks": {"database": "ok", "channel_layer": "ok", "broker": "ok"},
    }


@pytest.mark.django_db(transaction=True)
def test_healthz_needs_no_credentials_and_ignores_bad_ones(api: APIClient) -> None:
    response = api.get("/healthz", HTTP_AUTHORIZATION="Bearer garbage")

    assert response.status_code == 200
    assert response.json()["status"] == "ok"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "layers",
    [
        pytest.param({}, id="no-layer-configured"),
        pytest.param(
            {
                "default": {
                    "BACKEND": "channels_redis.core.RedisChannelLayer",
                    "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]},
                }
            },
            id="redis-unreachable",
        ),
    ],
)
def test_healthz_names_the_failing_check_with_503(
    api: APIClient, settings: Any, layers: dict[str, Any]
) -> None:
    settings.CHANNEL_LAYERS = layers

    response = api.get("/healthz")

    assert response.status_code == 503
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["status"] == "error"
    assert set(body["checks"]) == {"database", "channel_layer", "broker"}
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"] == "ok"
    assert re.fullmatch(r"error: \w+", body["checks"]["channel_layer"])
    # Only the exception's type is reported, never its message (hosts, ports...).
    assert "127.0.0.1" not in response.content.decode()


# --- /api/schema/ -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schema(django_db_blocker: Any) -> dict[str, Any]:
    with django_db_blocker.unblock():
        response = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi+json")
    document: dict[str, Any] = json.loads(response.content)
    return document


def test_schema_is_an_openapi_3_document(schema: dict[str, Any]) -> None:
    assert schema["openapi"].startswith("3.")
    assert schema["info"]["title"]
    assert schema["info"]["version"]
    assert isinstance(schema["paths"], dict)
    assert schema["paths"]


def test_schema_describes_the_mobile_auth_and_me_endpoints(schema: dict[str, Any]) -> None:
    paths = schema["paths"]

    assert {"get", "patch"} <= set(paths["/api/mobile/v1/me"])
    assert "delete" not in paths["/api/mobile/v1/me"]
    assert "post" in paths["/api/mobile/v1/auth/otp"]
    assert "post" in paths["/api/mobile/v1/auth/token"]
    otp = paths["/api/mobile/v1/auth/otp"]["post"]
    assert "202" in otp["responses"]
    assert "application/json" in otp["requestBody"]["content"]


def test_schema_documents_the_pharmacy_apis_errors_and_its_one_credential(
    schema: dict[str, Any],
) -> None:
    """CONTRACT 5 as an integrator reads it in the schema: each call takes the pharmacy's
    API token only, and each error answer is a problem+json naming its stable codes."""
    operations = {
        (path, method): operation
        for path, item in schema["paths"].items()
        if path.startswith("/api/pharmacy/v1/")
        for method, operation in item.items()
    }
    assert len(operations) >= 7
    codes: dict[str, set[str]] = {}
    for (path, method), operation in operations.items():
        assert operation["security"] == [{"apiToken": []}], (path, method)
        errors = {s: r for s, r in operation["responses"].items() if s.startswith(("4", "5"))}
        assert {"401", "403"} <= set(errors), (path, method)
        for status, response in errors.items():
            problem = response["content"]["application/problem+json"]["schema"]
            assert problem == {"$ref": "#/components/schemas/Problem"}
            named = set(re.findall(r"`([a-z_]+)`", response["description"]))
            assert named, response["description"]
            assert all(PROBLEMS[c][0] == int(status) for c in named), named
            codes.setdefault(operation["operationId"], set()).update(named)
    # The contract's codes, where an integrator looks for them.
    assert {
        "bad_access_code",
        "already_claimed",
        "not_reviewed",
        "prescription_expired",
        "prescription_cancelled",
    } <= codes["pharmacy_prescriptions_claim"]
    assert "bad_claim_secret" in codes["pharmacy_prescriptions_dispense"]
    assert "bad_claim_secret" in codes["pharmacy_prescriptions_release"]


def test_schema_lists_only_api_paths(schema: dict[str, Any]) -> None:
    for path in schema["paths"]:
        assert path.startswith("/api/"), path
    assert "/healthz" not in schema["paths"]
    assert not any(p.startswith("/admin") for p in schema["paths"])


@pytest.mark.django_db
def test_schema_is_served_as_yaml_by_default(api: APIClient) -> None:
    response = api.get("/api/schema/")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi")
    document = yaml.safe_load(response.content)
    assert document["openapi"].startswith("3.")
    assert "/api/mobile/v1/me" in document["paths"]


# --- /api/docs/ and /api/redoc/ -----------------------------------------------------------


def _asset_urls(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("page", "asset"),
    [
        ("/api/docs/", "swagger-ui-dist/swagger-ui-bundle.js"),
        ("/api/redoc/", "redoc/bundles/redoc.standalone.js"),
    ],
)
def test_viewer_loads_its_scripts_from_this_server(
    local_static: None, page: str, asset: str
) -> None:
    client = APIClient()

    response = client.get(page)

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    assert f"{SIDECAR}{asset}" in html
    assert "/api/schema/" in html
    scripts = re.findall(r'<script[^>]+src="([^"]+)"', html)
    assert scripts
    assert all(src.startswith(SIDECAR) for src in scripts), scripts
    # ...and this server really serves them.
    served = client.get(f"{SIDECAR}{asset}")
    assert served.status_code == 200
    assert "javascript" in served["Content-Type"]
    assert int(served["Content-Length"]) > 1000


@pytest.mark.django_db
def test_swagger_ui_needs_nothing_from_another_origin(local_static: None) -> None:
    client = APIClient()

    html = client.get("/api/docs/").content.decode()

    external = [u for u in _asset_urls(html) if re.match(r"(https?:)?//", u)]
    assert external == []
    for url in _asset_urls(html):
        if url.startswith(SIDECAR):
            assert client.get(url).status_code == 200, url


@pytest.mark.django_db
def test_redoc_needs_nothing_from_another_origin(local_static: None) -> None:
    """drf-spectacular's stock page loads Google Fonts (render-blocking, and unreachable
    from mainland China); the project's template must not."""
    client = APIClient()

    html = client.get("/api/redoc/").content.decode()

    external = [u for u in _asset_urls(html) if re.match(r"(https?:)?//", u)]
    assert external == []
    assert "fonts.googleapis.com" not in html
    assert "fonts.gstatic.com" not in html
    for url in _asset_urls(html):
        if url.startswith(SIDECAR):
            assert client.get(url).status_code == 200, url


# --- Errors on the schema and viewer paths ------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("method", "path"),
    [("post", "/api/schema/"), ("post", "/api/docs/"), ("delete", "/api/redoc/")],
)
def test_method_not_allowed_on_schema_and_viewers_is_a_json_problem(
    local_static: None, method: str, path: str
) -> None:
    """These views render YAML or HTML; their errors must still be JSON problems (they
    were once YAML, or the text '405 Method Not Allowed', under a problem+json label)."""
    response = getattr(APIClient(), method)(path)

    assert response.status_code == 405
    assert response["Content-Type"] == PROBLEM
    body = json.loads(response.content)
    assert body["code"] == "method_not_allowed"
    assert body["type"] == "/problems/method_not_allowed"
    assert body["status"] == 405
