from django.urls import path

from consultations import api as chat
from mobile_api import api, consultations, devices, directory, orders, patients, prescriptions
from prescriptions import fhir_api

app_name = "mobile"

urlpatterns = [
    path("auth/otp", api.OtpApi.as_view(), name="auth-otp"),
    path("auth/token", api.TokenApi.as_view(), name="auth-token"),
    path("auth/refresh", api.RefreshApi.as_view(), name="auth-refresh"),
    path("me", api.MeApi.as_view(), name="me"),
    path("profiles", patients.ProfilesApi.as_view(), name="profiles"),
    path("profiles/<uuid:profile_id>", patients.ProfileDetailApi.as_view(), name="profile"),
    path("records", patients.RecordsApi.as_view(), name="records"),
    path("records/<uuid:record_id>", patients.RecordDetailApi.as_view(), name="record"),
    path("devices", devices.DevicesApi.as_view(), name="devices"),
    path("devices/<uuid:device_id>", devices.DeviceDetailApi.as_view(), name="device"),
    path("hospitals", directory.HospitalsApi.as_view(), name="hospitals"),
    path("departments", directory.DepartmentsApi.as_view(), name="departments"),
    path("doctors", directory.DoctorsApi.as_view(), name="doctors"),
    path("consultations", consultations.ConsultationsApi.as_view(), name="consultations"),
    path(
        "consultations/<uuid:consultation_id>",
        consultations.ConsultationDetailApi.as_view(),
        name="consultation",
    ),
    path(
        "consultations/<uuid:consultation_id>/cancel",
        consultations.ConsultationCancelApi.as_view(),
        name="consultation-cancel",
    ),
    path(
        "consultations/<uuid:consultation_id>/ws-ticket",
        chat.ConsultationWsTicketApi.as_view(),
        name="consultation-ws-ticket",
    ),
    path(
        "consultations/<uuid:consultation_id>/messages",
        chat.ConsultationMessagesApi.as_view(),
        name="consultation-messages",
    ),
    path(
        "consultations/<uuid:consultation_id>/attachments",
        chat.AttachmentUploadApi.as_view(),
        name="consultation-attachments",
    ),
    path(
        "consultations/<uuid:consultation_id>/attachments/<uuid:attachment_id>",
        chat.AttachmentDownloadApi.as_view(),
        name="consultation-attachment",
    ),
    path("orders", orders.OrdersApi.as_view(), name="orders"),
    path("orders/<uuid:order_id>", orders.OrderApi.as_view(), name="order"),
    path("orders/<uuid:order_id>/pay", orders.OrderPayApi.as_view(), name="order-pay"),
    path("prescriptions", prescriptions.PatientPrescriptionsApi.as_view(), name="prescriptions"),
    path(
        "prescriptions/<uuid:prescription_id>",
        prescriptions.PatientPrescriptionApi.as_view(),
        name="prescription",
    ),
    path(
        "prescriptions/<uuid:prescription_id>/qr.png",
        prescriptions.QrPngApi.as_view(),
        name="prescription-qr-png",
    ),
    path(
        "prescriptions/<uuid:prescription_id>/qr.svg",
        prescriptions.QrSvgApi.as_view(),
        name="prescription-qr-svg",
    ),
    path(
        "prescriptions/<uuid:prescription_id>/fulfilment",
        prescriptions.FulfilmentApi.as_view(),
        name="prescription-fulfilment",
    ),
    path(
        "prescriptions/<uuid:prescription_id>/cancel",
        prescriptions.PatientCancelApi.as_view(),
        name="prescription-cancel",
    ),
    path("pharmacies", prescriptions.PharmaciesApi.as_view(), name="pharmacies"),
    path(
        "prescriptions/<uuid:prescription_id>/fhir",
        fhir_api.PatientFhirApi.as_view(),
        name="prescription-fhir",
    ),
]
