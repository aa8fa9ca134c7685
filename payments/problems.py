"""The error codes of the payments context (registered with the problem catalogue)."""

from backend.api.problems import register_problem

for _code, _status, _title in (
    ("order_not_payable", 409, "The order cannot be paid in its present state"),
    ("order_state_conflict", 409, "The order is not in a state that allows this"),
    ("order_already_paid", 409, "The order is paid: it cannot change now"),
    ("channel_unavailable", 422, "The payment channel is not available for this hospital"),
    ("insurance_refused", 422, "The medical-insurance platform refused the settlement"),
    ("bad_notification_signature", 401, "The notification's signature does not verify"),
    ("bad_notification", 400, "The notification cannot be read"),
    ("notification_mismatch", 422, "The notification does not match the order"),
    ("fee_above_paid", 422, "The fee is more than the patient paid for the consultation"),
):
    register_problem(_code, _status, _title)
