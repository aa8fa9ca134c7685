"""The error codes of the consultations context (registered with the problem catalogue)."""

from backend.api.problems import register_problem

for _code, _status, _title in (
    (
        "first_visit_forbidden",
        422,
        "A consultation needs a prior offline diagnosis (no first visits online)",
    ),
    ("doctor_not_qualified", 403, "The doctor is not qualified to accept online consultations"),
    ("identity_check_required", 403, "The doctor must complete today's identity check first"),
    ("outside_hospital", 403, "The consultation belongs to another hospital"),
    ("not_your_queue", 403, "The consultation is queued for another doctor or department"),
    ("not_a_participant", 403, "Only the consultation's patient and doctor may do this"),
    ("follow_up_not_confirmed", 422, "Confirm that the visit qualifies as a follow-up"),
    ("consultation_state_conflict", 409, "The consultation is not in a state that allows this"),
    ("already_accepted", 409, "Another doctor has already accepted this consultation"),
    ("consultation_already_open", 409, "This patient already has an open consultation here"),
    ("consultation_not_open", 409, "The consultation is not open for messages"),
    ("invalid_icd10", 400, "Unknown or malformed ICD-10 code"),
    ("unsupported_document_type", 415, "Upload a PDF, JPEG or PNG file"),
    ("document_too_large", 413, "The file is too large"),
):
    register_problem(_code, _status, _title)
