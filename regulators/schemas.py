"""JSON Schemas of the records the platform receives (DOMAIN.md, "What the regulator
receives"). Every payload is validated before it is stored: a record that does not match
is a bug in its builder, and the business transaction is refused rather than reporting
something the platform would reject later.

Every business transaction appends a record, so the check runs compiled
(``fastjsonschema``: about 20x faster than interpreting the schema); only a payload it
refuses is read again by ``jsonschema``, which names every error rather than the first."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator

_STR = {"type": "string"}
_OPT_STR = {"type": ["string", "null"]}
_INT = {"type": "integer", "minimum": 0}
_TIME = {"type": "string", "format": "date-time", "minLength": 20}
_OPT_TIME = {"type": ["string", "null"]}


def _object(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "required": sorted(required),
        "properties": {**required, **(optional or {})},
    }


PERSON_ID = _object({"name": _STR, "id_type": _STR, "id_number": _STR})
PATIENT = _object(
    {"name": _STR, "id_type": _STR, "id_number": _STR, "sex": _STR, "birth_date": _STR},
    {"guardian": {"type": ["object", "null"]}},
)
STAFF_REF = _object({"name": _STR, "practice_certificate_number": _STR})
DIAGNOSIS = _object({"icd10": _STR, "name": _STR, "main": {"type": "boolean"}})

#: The order that pays for a consultation or a prescription (fen), once one exists.
PAYMENT = {
    "oneOf": [
        _object(
            {"order_id": _STR, "status": _STR, "total": _INT},
            {
                "channel": _STR,
                "insurance_fund": _INT,
                "insurance_account": _INT,
                "self_pay": _INT,
                "refunded": _INT,
            },
        ),
        {"type": "null"},
    ]
}

CONSULTATION = _object(
    {
        "consultation_id": _STR,
        "event": _STR,
        "status": _STR,
        "kind": {"const": "follow_up"},
        "mode": {"enum": ["text", "audio", "video"]},
        "patient": PATIENT,
        "department_code": _STR,
        "requested_at": _TIME,
        "prior_diagnosis": _object(
            {"institution": _STR, "diagnosed_on": _STR, "icd10": _STR, "name": _STR},
            {"document_sha256": _STR},
        ),
        "fee": _INT,
    },
    {
        "doctor": {"oneOf": [STAFF_REF, {"type": "null"}]},
        "accepted_at": _OPT_TIME,
        "ended_at": _OPT_TIME,
        "chief_complaint": _STR,
        "history": _STR,
        "allergies": {"type": "array", "items": _STR},
        "diagnoses": {"type": "array", "items": DIAGNOSIS},
        "end_reason": _STR,
        "chat_record": _OPT_STR,
        "payment": PAYMENT,
    },
)

LINE = _object(
    {
        "drug_code": _STR,
        "drug_name": _STR,
        "specification": _STR,
        "dose": _STR,
        "dose_unit": _STR,
        "frequency": _STR,
        "route": _STR,
        "days": _INT,
        "quantity": _INT,
        "unit_price": _INT,
    }
)

#: A personal signature as in the pharmacy's bundle (prescriptions.signing.signature_block):
#: verifiable from the signed bytes with the chain, whose last certificate is the root the
#: institution's filing carries.
SIGNATURE = _object(
    {
        "algorithm": _STR,
        "value": _STR,
        "signed_at": _TIME,
        "certificate_serial": _STR,
        "certificate_sha256": _STR,
        "certificate_chain": {"type": "array", "minItems": 2, "items": _STR},
    }
)

PRESCRIPTION = _object(
    {
        "prescription_id": _STR,
        "version": _INT,
        "event": _STR,
        "status": {"enum": ["issued", "superseded", "revoked", "reviewed", "rejected", "expired"]},
        "consultation_id": _STR,
        "type": {"enum": ["western", "chinese_patent", "herbal"]},
        "issued_at": _TIME,
        "valid_until": _TIME,
        "lines": {"type": "array", "minItems": 1, "items": LINE},
        "total": _INT,
        "doctor": STAFF_REF,
        "signed_content": _STR,
        "doctor_signature": SIGNATURE,
    },
    {
        "reason": _STR,
        "patient_birth_date": _STR,
        "guardian": {"type": ["object", "null"]},
        "specialist": {"type": ["object", "null"]},
        "chronic_reason": _STR,
        "payment": PAYMENT,
    },
)

REVIEW = _object(
    {
        "prescription_id": _STR,
        "version": _INT,
        "pharmacist": STAFF_REF,
        "reviewed_at": _TIME,
        "result": {"enum": ["pass", "fail"]},
    },
    {"reason": _STR, "content": _STR, "signature": {"oneOf": [{"type": "null"}, SIGNATURE]}},
)

DISPENSE = _object(
    {
        "prescription_id": _STR,
        "event": {"enum": ["claimed", "released", "dispensed", "shipped", "delivered"]},
        "delivery_type": {"enum": ["hospital_pharmacy", "home_delivery", "retail_pharmacy"]},
        "pharmacy": _object({"code": _STR, "name": _STR}),
    },
    {
        "claimed_at": _TIME,
        "released_at": _TIME,
        "reason": _STR,
        "dispensed_at": _OPT_TIME,
        "dispensing_pharmacist": {"type": ["string", "null"]},
        "dispensing_pharmacist_licence": {"type": ["string", "null"]},
        "courier": _STR,
        "tracking_number": _STR,
        "shipped_at": _OPT_TIME,
        "delivered_at": _OPT_TIME,
        "lines": {"type": "array"},
        "payment": PAYMENT,
    },
)

ALERT = _object(
    {
        "alert_id": _STR,
        "kind": _STR,
        "rule": _STR,
        "raised_at": _TIME,
    },
    {"subject_type": _STR, "subject_id": _STR, "details": {"type": "object"}},
)

FILING_INSTITUTION = _object(
    {
        "platform_id": _STR,
        "uscc": {"type": "string", "minLength": 18, "maxLength": 18},
        "name": _STR,
        "practice_licence_number": _STR,
        "practice_licence_valid_until": _STR,
        "seal_certificate_pem": _STR,
        "root_certificate_pem": _STR,
    }
)

FILING_PRACTITIONER = _object(
    {
        "role": {"enum": ["doctor", "pharmacist"]},
        "name": _STR,
        "id_type": _STR,
        "id_number": _STR,
        "practice_certificate_number": _STR,
        "qualification_certificate_number": _STR,
        "title": _STR,
        "department": _OPT_STR,
        "filing_status": _STR,
        "years_of_practice": _INT,
    },
    {"certificate_serial": _OPT_STR},
)

SCHEMAS: dict[str, dict[str, Any]] = {
    "filing.institution": FILING_INSTITUTION,
    "filing.practitioner": FILING_PRACTITIONER,
    "consultation": CONSULTATION,
    "prescription": PRESCRIPTION,
    "review": REVIEW,
    "dispense": DISPENSE,
    "alert": ALERT,
}


#: Every record type the hospital sends (the console names each: record_types.js). A new
#: one is added here, with its words, or ``outbox_append`` refuses it.
RECORD_TYPES: tuple[str, ...] = (
    "filing.institution",
    "filing.practitioner",
    *(
        f"consultation.{name}"
        for name in (
            "requested",
            "accepted",
            "ended",
            "referred_offline",
            "first_visit_refused",
            "cancelled",
            "expired",
        )
    ),
    *(f"prescription.{name}" for name in ("issued", "superseded", "revoked", "expired")),
    "review",
    *(f"dispense.{name}" for name in ("claim", "release", "dispense", "ship", "deliver")),
    "alert",
)


def _family(record_type: str) -> str:
    return record_type.split(".")[0] if record_type not in SCHEMAS else record_type


@cache
def validator(record_type: str) -> Draft202012Validator:
    return Draft202012Validator(SCHEMAS[_family(record_type)])


@cache
def _compiled(family: str) -> Callable[[Any], Any]:
    # The schemas use only keywords that draft 7 and 2020-12 read alike (type, required,
    # properties, items, enum, const, oneOf, minimum, lengths); formats are checked too.
    schema = {"$schema": "http://json-schema.org/draft-07/schema#", **SCHEMAS[family]}
    check: Callable[[Any], Any] = fastjsonschema.compile(schema)
    return check


def payload_errors(record_type: str, payload: dict[str, Any]) -> list[str]:
    if record_type not in RECORD_TYPES:
        return [f"unknown record type {record_type!r}"]
    try:
        _compiled(_family(record_type))(payload)
    except fastjsonschema.JsonSchemaValueException as exc:
        errors = [
            f"{_where(error.absolute_path)}: {error.message}"
            for error in validator(record_type).iter_errors(payload)
        ]
        # jsonschema does not check formats (date-time) unless told: the compiled check does.
        return errors or [f"{_where(exc.path[1:])}: {exc.message.removeprefix(f'{exc.name} ')}"]
    return []


def _where(path: Any) -> str:
    return "/".join(str(p) for p in path) or "(root)"
