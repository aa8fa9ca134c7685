from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from backend.api import health, problem_docs

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("problems/", problem_docs.problem_catalogue, name="problems"),
    path("problems/<slug:code>", problem_docs.problem_detail, name="problem"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    path("api/mobile/v1/", include("mobile_api.urls")),
    path("api/console/v1/", include("console.urls")),
    path("api/pharmacy/v1/", include("prescriptions.pharmacy_urls")),
    path("api/pki/v1/", include("backend.pki.urls")),
    path("api/regulator/v1/", include("regulators.urls")),
    path("api/payments/v1/", include("payments.urls")),
    path("console/", include("console.page_urls")),
    path("admin/", admin.site.urls),
]

handler404 = "backend.api.errors.not_found"
handler500 = "backend.api.errors.server_error"
