from django.urls import path

from prescriptions import fhir_api
from prescriptions import pharmacy_api as api

app_name = "pharmacy"

urlpatterns = [
    path("prescriptions/claim", api.ClaimApi.as_view(), name="claim"),
    path(
        "prescriptions/<uuid:prescription_id>",
        api.PharmacyPrescriptionApi.as_view(),
        name="prescription",
    ),
    path(
        "prescriptions/<uuid:prescription_id>/bundle",
        api.PharmacyBundleApi.as_view(),
        name="bundle",
    ),
    path(
        "prescriptions/<uuid:prescription_id>/dispense", api.DispenseApi.as_view(), name="dispense"
    ),
    path("prescriptions/<uuid:prescription_id>/release", api.ReleaseApi.as_view(), name="release"),
    path("prescriptions/<uuid:prescription_id>/ship", api.ShipApi.as_view(), name="ship"),
    path("prescriptions/<uuid:prescription_id>/deliver", api.DeliverApi.as_view(), name="deliver"),
    path(
        "prescriptions/<uuid:prescription_id>/fhir", fhir_api.PharmacyFhirApi.as_view(), name="fhir"
    ),
]
