"""The error codes of the prescriptions context (registered with the problem catalogue)."""

from backend.api.problems import register_problem

for _code, _status, _title in (
    ("not_treating_doctor", 403, "Only the consultation's treating doctor may prescribe"),
    ("prescribing_closed", 409, "The consultation no longer allows prescribing"),
    ("controlled_drug_forbidden", 422, "Specially controlled drugs cannot be prescribed online"),
    ("guardian_required", 422, "A child under 6 needs a guardian and a specialist recorded"),
    ("validity_too_long", 422, "The validity is longer than allowed (at most 3 days)"),
    ("supply_too_long", 422, "The supply is longer than allowed without a chronic reason"),
    ("unknown_drug", 422, "The drug is not in the catalogue or not available"),
    ("prescription_state_conflict", 409, "The prescription is not in a state that allows this"),
    ("not_reviewed", 409, "The prescription has not been approved by a pharmacist"),
    ("not_your_review", 403, "The prescription belongs to another hospital"),
    ("pharmacist_not_qualified", 403, "The pharmacist is not filed or not licensed"),
    ("bad_access_code", 403, "The access code is wrong"),
    ("already_claimed", 409, "Another pharmacy has claimed this prescription"),
    ("not_claimant", 403, "This pharmacy has not claimed the prescription"),
    ("bad_claim_secret", 403, "The claim secret is wrong"),
    ("cancel_pending", 409, "The prescriber cancelled it: release the claim"),
    ("prescription_expired", 410, "The prescription has expired"),
    ("prescription_cancelled", 410, "The prescription was cancelled"),
    ("dispense_mismatch", 422, "The dispense does not match the prescription"),
    ("bundle_invalid", 422, "The prescription's signatures do not verify"),
):
    register_problem(_code, _status, _title)
