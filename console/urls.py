from django.urls import path

from console import administration, api, consultations, payments, prescriptions
from consultations import api as chat
from prescriptions import fhir_api

app_name = "console"

urlpatterns = [
    path("auth/csrf", api.CsrfApi.as_view(), name="csrf"),
    path("auth/login", api.LoginApi.as_view(), name="login"),
    path("auth/totp", api.TotpApi.as_view(), name="totp"),
    path("auth/logout", api.LogoutApi.as_view(), name="logout"),
    path("auth/session", api.SessionApi.as_view(), name="session"),
    path("ws-ticket", api.WsTicketApi.as_view(), name="ws-ticket"),
    path("identity-check", consultations.IdentityCheckApi.as_view(), name="identity-check"),
    path("duty", consultations.DutyApi.as_view(), name="duty"),
    path("icd10", consultations.Icd10SearchApi.as_view(), name="icd10"),
    path("consultations", consultations.QueueApi.as_view(), name="consultations"),
    path(
        "consultations/<uuid:consultation_id>",
        consultations.ConsoleConsultationDetailApi.as_view(),
        name="consultation",
    ),
    path(
        "consultations/<uuid:consultation_id>/patient",
        consultations.PatientSummaryApi.as_view(),
        name="consultation-patient",
    ),
    path(
        "consultations/<uuid:consultation_id>/accept",
        consultations.AcceptApi.as_view(),
        name="consultation-accept",
    ),
    path(
        "consultations/<uuid:consultation_id>/end",
        consultations.EndApi.as_view(),
        name="consultation-end",
    ),
    path(
        "consultations/<uuid:consultation_id>/refer-offline",
        consultations.ReferOfflineApi.as_view(),
        name="consultation-refer-offline",
    ),
    path(
        "consultations/<uuid:consultation_id>/refuse-first-visit",
        consultations.RefuseFirstVisitApi.as_view(),
        name="consultation-refuse-first-visit",
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
    path("prescriptions", prescriptions.PrescriptionsApi.as_view(), name="prescriptions"),
    path(
        "prescriptions/<uuid:prescription_id>",
        prescriptions.PrescriptionDetailApi.as_view(),
        name="prescription",
    ),
    path(
        "prescriptions/<uuid:prescription_id>/sign",
        prescriptions.SignApi.as_view(),
        name="prescription-sign",
    ),
    path(
        "prescriptions/<uuid:prescription_id>/approve",
        prescriptions.ApproveApi.as_view(),
        name="prescription-approve",
    ),
    path(
        "prescriptions/<uuid:prescription_id>/reject",
        prescriptions.RejectApi.as_view(),
        name="prescription-reject",
    ),
    path(
        "prescriptions/<uuid:prescription_id>/revise",
        prescriptions.ReviseApi.as_view(),
        name="prescription-revise",
    ),
    path(
        "prescriptions/<uuid:prescription_id>/cancel",
        prescriptions.CancelApi.as_view(),
        name="prescription-cancel",
    ),
    path(
        "prescriptions/<uuid:prescription_id>/bundle",
        prescriptions.BundleApi.as_view(),
        name="prescription-bundle",
    ),
    path("reviews", prescriptions.ReviewsApi.as_view(), name="reviews"),
    path("drugs", prescriptions.DrugSearchApi.as_view(), name="drugs"),
    path(
        "payments/reconciliations",
        payments.ReconciliationsApi.as_view(),
        name="payments-reconciliations",
    ),
    path(
        "prescriptions/<uuid:prescription_id>/fhir",
        fhir_api.ConsoleFhirApi.as_view(),
        name="prescription-fhir",
    ),
    path(
        "administration/practitioners",
        administration.PractitionersApi.as_view(),
        name="administration-practitioners",
    ),
    path("administration/outbox", administration.OutboxApi.as_view(), name="administration-outbox"),
    path(
        "administration/outbox/<uuid:record_id>/replay",
        administration.ReplayApi.as_view(),
        name="administration-outbox-replay",
    ),
    path(
        "administration/audit-chain/verify",
        administration.AuditChainApi.as_view(),
        name="administration-audit-chain",
    ),
]
