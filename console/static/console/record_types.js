// The words of the record types the hospital sends (regulators.schemas.RECORD_TYPES), one
// key each; a type without one is shown as it is.
export const RECORD_TYPES = {
  "filing.institution": "ov_rt_filing_institution",
  "filing.practitioner": "ov_rt_filing_practitioner",
  "consultation.requested": "ov_rt_consultation_requested",
  "consultation.accepted": "ov_rt_consultation_accepted",
  "consultation.ended": "ov_rt_consultation_ended",
  "consultation.expired": "ov_rt_consultation_expired",
  "consultation.cancelled": "ov_rt_consultation_cancelled",
  "consultation.referred_offline": "ov_rt_consultation_referred_offline",
  "consultation.first_visit_refused": "ov_rt_consultation_first_visit_refused",
  "prescription.issued": "ov_rt_prescription_issued",
  "prescription.superseded": "ov_rt_prescription_superseded",
  "prescription.revoked": "ov_rt_prescription_revoked",
  "prescription.expired": "ov_rt_prescription_expired",
  review: "ov_rt_review",
  "dispense.claim": "ov_rt_dispense_claim",
  "dispense.release": "ov_rt_dispense_release",
  "dispense.dispense": "ov_rt_dispense_dispense",
  "dispense.ship": "ov_rt_dispense_ship",
  "dispense.deliver": "ov_rt_dispense_deliver",
  alert: "ov_rt_alert",
};
