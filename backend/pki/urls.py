from django.urls import path

from backend.pki import api

app_name = "pki"

urlpatterns = [
    path("hospitals/<uuid:hospital_id>/root.pem", api.RootCertificateApi.as_view(), name="root"),
    path("hospitals/<uuid:hospital_id>/crl", api.CrlApi.as_view(), name="crl"),
]
