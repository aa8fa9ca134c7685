"""A prescription as FHIR R4 (4.0.1): what other systems (a regional health platform, a
pharmacy's own software, the patient's health app) can read without knowing our API.

``prescription_fhir_bundle`` answers a ``Bundle`` of type ``collection`` holding

- ``Patient``: name, gender, birth date, nothing else (no ID document number, masked or
  not; no phone, no address);
- ``Organization``: the hospital (identified by its unified social credit code) and,
  once one claimed it, the pharmacy;
- ``Practitioner``: the prescribing doctor, the reviewing pharmacist once they approved,
  and the pharmacy's dispensing pharmacist(s) once dispensed, each identified by their
  practice certificate or licence number;
- one ``MedicationRequest`` per line of the current version;
- one ``MedicationDispense`` per line that was dispensed;
- ``Provenance`` resources carrying the signatures: the doctor's, the pharmacist's
  countersignature, and the hospital's seal over the dispense receipt.

Why ``collection`` and not ``document``: a FHIR document is an attested, immutable whole
(a ``Composition`` first, a fixed ``Bundle.identifier``, and a signature, if any, over
the Bundle). What our people sign is not this rendering but the RFC 8785 bytes of
``prescriptions.signing`` (docs/prescription-signing.md), and this export changes as the
prescription moves (status, claim, dispense, delivery). Calling it a document would claim
an attestation that does not exist; ``collection`` ("a set of resources collected into a
single package for ease of distribution") says what it is. Verification stays with the
signed bundle (``GET …/prescriptions/{id}/bundle``); the Provenance resources say who
signed what and let a reader match each signature to those bytes.

MedicationRequest.status from our lifecycle (R4 value set ``medicationrequest-status``)::

    ours             MedicationRequest.status   why
    draft            draft                      the doctor is still writing it
    signed           draft                      signed, not yet verified ("requires
    under_review     draft                        sign-off, verification": R4's draft)
    review_rejected  draft + statusReason       the pharmacist asked for a change
                       "clarif"                   (clarification); the doctor revises
                                                  (a new version) or cancels
    active           active                     approved, the patient may fill it
    claimed          active                     a pharmacy holds it, not yet dispensed
    dispensed        completed | stopped        per line: completed when the whole
    shipped          completed | stopped          quantity was dispensed; stopped when
    delivered        completed | stopped          dispensed short (the dispense closes
                                                  the prescription, DOMAIN rule 11)
    cancelled        cancelled                  withdrawn before anything was dispensed
    expired          stopped                    R4 has no "expired"; nothing was
                                                  dispensed and nothing will be

MedicationDispense.status (R4 ``medicationdispense-status``): ``completed`` when the
medicine reached the patient (pick-up: at the dispense; delivery: once delivered, with
``whenHandedOver`` then), ``in-progress`` while a delivery is packed or on its way.
Batch numbers: R4's MedicationDispense has no batch element (a batch belongs to a
``Medication``, one per Medication) and one line may leave from several batches, so each
ledger entry is a ``dispense-batch`` extension (``lotNumber`` and ``quantity``).

Signatures. R4's ``Signature`` names its formats by MIME type. Ours are raw signatures
(ECDSA P-256/SHA-256 in DER, or Ed25519) over RFC 8785 canonical JSON, not JWS and not
XML-DSig, so ``sigFormat`` is ``application/octet-stream`` and ``targetFormat`` is
``application/json`` (the signed bytes are JSON, and not the FHIR resources of this
Bundle: saying ``application/fhir+json`` would invite a reader to verify the signature
over the resources, which would fail). Three extensions on each ``Signature`` carry what
a verifier needs besides the value: the algorithm, the SHA-256 (hex) of the exact signed
bytes, and the signer's certificate (DER, ``application/pkix-cert``). The signed bytes
themselves are not embedded: the doctor's include the patient's masked ID number, which
this export leaves out.

- The doctor's signature: type ``1.2.840.10065.1.12.1.1`` (ASTM E1762 "Author's
  Signature"), agent ``author``.
- The pharmacist's countersignature: type ``1.2.840.10065.1.12.1.5`` ("Verification
  Signature": "a signature verifying the information contained in a document", e.g. a
  physician countersigning an order recorded by a nurse). That is the review: the
  pharmacist checks an order another person wrote and signs over the hash of its
  signature. "Validation" (.6) and "Review" (.13) are about admitting data into the
  patient record, which is not what a pharmacist's review does. Agent ``verifier``; the
  Provenance names the doctor's as its ``source`` entity, since the countersignature
  covers that signature.
- The hospital's seal over the dispense receipt: type ``1.2.840.10065.1.12.1.14``
  ("Source Signature": the signature of an automated data source). The seal is not a
  person's act: the hospital's system applies it to the receipt it composes from the
  pharmacy's report. Agents: the pharmacy (``performer``) and the hospital
  (``custodian``), the signer.

Identifier and code systems. HL7 registers no URIs for Chinese identifiers (unified
social credit code, practice certificates) or for the NHSA drug codes, so the systems
below are names in one namespace of ours (``NAMESPACE``): unique, stable, and defined in
this module only. Change them here if a national FHIR guide assigns official ones, or
when the platform publishes them under its own domain (``internet-hospital.example`` is
reserved by RFC 2606 for exactly this: a name that is nobody's yet).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import uuid
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from django.utils import timezone

from backend.organisations.models import Hospital, Pharmacy, Practitioner, PractitionerKind
from backend.pki.models import SigningCertificate
from prescriptions.models import (
    CodeSystem,
    DispenseEntry,
    Fulfilment,
    Prescription,
    PrescriptionLine,
    PrescriptionVersion,
)
from prescriptions.models import PrescriptionStatus as S
from prescriptions.selectors import version_current

NAMESPACE = "https://internet-hospital.example/fhir"

SYSTEM_USCC = f"{NAMESPACE}/sid/cn-uscc"
SYSTEM_PHYSICIAN_CERTIFICATE = f"{NAMESPACE}/sid/cn-physician-practice-certificate"
SYSTEM_PHARMACIST_CERTIFICATE = f"{NAMESPACE}/sid/cn-pharmacist-practice-certificate"
SYSTEM_LICENSED_PHARMACIST = f"{NAMESPACE}/sid/cn-licensed-pharmacist"
SYSTEM_PHARMACY = f"{NAMESPACE}/sid/pharmacy"
SYSTEM_PRESCRIPTION = f"{NAMESPACE}/sid/prescription"
SYSTEM_PRESCRIPTION_LINE = f"{NAMESPACE}/sid/prescription-line"
SYSTEM_CONSULTATION = f"{NAMESPACE}/sid/consultation"
#: Drug codes: the national medical-insurance code (23 characters) or the hospital's own.
DRUG_SYSTEMS: dict[str, str] = {
    CodeSystem.NHSA: f"{NAMESPACE}/CodeSystem/cn-nhsa-drug",
    CodeSystem.HOSPITAL: f"{NAMESPACE}/CodeSystem/hospital-drug",
}
EXT_SIGNATURE_ALGORITHM = f"{NAMESPACE}/StructureDefinition/signature-algorithm"
EXT_SIGNED_CONTENT_SHA256 = f"{NAMESPACE}/StructureDefinition/signed-content-sha256"
EXT_SIGNATURE_CERTIFICATE = f"{NAMESPACE}/StructureDefinition/signature-certificate"
EXT_DISPENSE_BATCH = f"{NAMESPACE}/StructureDefinition/dispense-batch"

SYSTEM_ICD10 = "http://hl7.org/fhir/sid/icd-10"
SYSTEM_UCUM = "http://unitsofmeasure.org"
SYSTEM_SIGNATURE_TYPE = "urn:iso-astm:E1762-95:2013"
_HL7 = "http://terminology.hl7.org/CodeSystem"
_IDENTIFIER_TYPE = f"{_HL7}/v2-0203"
_ORGANIZATION_TYPE = f"{_HL7}/organization-type"
_TIMING_ABBREVIATION = f"{_HL7}/v3-GTSAbbreviation"
_REQUEST_STATUS_REASON = f"{_HL7}/medicationrequest-status-reason"
_REQUEST_CATEGORY = f"{_HL7}/medicationrequest-category"
_DISPENSE_PERFORMER = f"{_HL7}/medicationdispense-performer-function"
_PROVENANCE_AGENT = f"{_HL7}/provenance-participant-type"
_DATA_OPERATION = f"{_HL7}/v3-DataOperation"

SIGNATURE_AUTHOR = ("1.2.840.10065.1.12.1.1", "Author's Signature")
SIGNATURE_VERIFICATION = ("1.2.840.10065.1.12.1.5", "Verification Signature")
SIGNATURE_SOURCE = ("1.2.840.10065.1.12.1.14", "Source Signature")

#: Our lifecycle → MedicationRequest.status (the table in the module docstring).
REQUEST_STATUS: dict[str, str] = {
    S.DRAFT: "draft",
    S.SIGNED: "draft",
    S.UNDER_REVIEW: "draft",
    S.REVIEW_REJECTED: "draft",
    S.ACTIVE: "active",
    S.CLAIMED: "active",
    S.DISPENSED: "completed",
    S.SHIPPED: "completed",
    S.DELIVERED: "completed",
    S.CANCELLED: "cancelled",
    S.EXPIRED: "stopped",
}
_AFTER_DISPENSE = frozenset({S.DISPENSED, S.SHIPPED, S.DELIVERED})

#: Frequencies with an exact HL7 timing abbreviation: (code, times, per period, unit).
_FREQUENCIES: dict[str, tuple[str, int, int, str]] = {
    "qd": ("QD", 1, 1, "d"),
    "bid": ("BID", 2, 1, "d"),
    "tid": ("TID", 3, 1, "d"),
    "qid": ("QID", 4, 1, "d"),
    "qod": ("QOD", 1, 2, "d"),
    **{f"q{n}h": (f"Q{n}H", 1, n, "h") for n in (1, 2, 3, 4, 6, 8)},
}
_AS_NEEDED = frozenset({"prn"})
#: Dose units that are UCUM units as they are written (others stay free text: 片, 粒…).
_UCUM_UNITS = {"mg": "mg", "g": "g", "μg": "ug", "ug": "ug", "mcg": "ug", "ml": "mL", "l": "L"}


@dataclass(frozen=True)
class _Review:
    """The approving pharmacist's countersignature of the current version."""

    pharmacist: Practitioner
    reviewed_at: dt.datetime
    statement: bytes
    signature: bytes
    certificate: SigningCertificate


def _review_of(version: PrescriptionVersion | None) -> _Review | None:
    if (
        version is None
        or version.review_result != "approved"
        or version.reviewed_by is None
        or version.reviewed_at is None
        or version.review_bytes is None
        or version.pharmacist_signature is None
        or version.pharmacist_certificate is None
    ):
        return None
    return _Review(
        pharmacist=version.reviewed_by,
        reviewed_at=version.reviewed_at,
        statement=bytes(version.review_bytes),
        signature=bytes(version.pharmacist_signature),
        certificate=version.pharmacist_certificate,
    )


def _instant(value: dt.datetime) -> str:
    return timezone.localtime(value).isoformat()


def _number(value: Decimal) -> int | float:
    """A JSON number (FHIR decimals are numbers on the wire, never strings)."""
    return int(value) if value == value.to_integral_value() else float(value)


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _derived_id(prescription: Prescription, name: str) -> str:
    """A stable id for a resource derived from the prescription (the same on every
    export, so a reader can update what it stored)."""
    return str(uuid.uuid5(prescription.pk, name))


def _ref(resource_id: str) -> dict[str, str]:
    return {"reference": f"urn:uuid:{resource_id}"}


def _coding(system: str, code: str, display: str = "") -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


def _concept(system: str, code: str, display: str = "", text: str = "") -> dict[str, Any]:
    return {"coding": [_coding(system, code, display)], "text": text}


def _pruned(value: Any) -> Any:
    """Drop empty values: FHIR JSON allows no "", [], {} or null."""
    if isinstance(value, dict):
        out = {k: _pruned(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        items = [_pruned(v) for v in value]
        return [v for v in items if v not in (None, "", [], {})]
    return value


# --- Who ------------------------------------------------------------------------------------


def _patient(prescription: Prescription) -> dict[str, Any]:
    profile = prescription.profile
    return {
        "resourceType": "Patient",
        "id": str(profile.pk),
        "name": [{"use": "official", "text": profile.real_name}],
        "gender": profile.sex,  # male | female | unknown: FHIR's codes too
        "birthDate": profile.birth_date.isoformat(),
    }


def _hospital(hospital: Hospital) -> dict[str, Any]:
    return {
        "resourceType": "Organization",
        "id": str(hospital.pk),
        "identifier": [
            {
                "type": _concept(_IDENTIFIER_TYPE, "TAX", "Tax ID number", "统一社会信用代码"),
                "system": SYSTEM_USCC,
                "value": hospital.unified_social_credit_code,
            }
        ],
        "type": [_concept(_ORGANIZATION_TYPE, "prov", "Healthcare Provider")],
        "name": hospital.name,
    }


def _pharmacy(pharmacy: Pharmacy) -> dict[str, Any]:
    return {
        "resourceType": "Organization",
        "id": str(pharmacy.pk),
        "identifier": [{"system": SYSTEM_PHARMACY, "value": pharmacy.code}],
        "type": [_concept(_ORGANIZATION_TYPE, "prov", "Healthcare Provider")],
        "name": pharmacy.name,
        "address": [{"text": pharmacy.address}],
    }


def _practitioner(practitioner: Practitioner) -> dict[str, Any]:
    if practitioner.kind == PractitionerKind.DOCTOR:
        kind = _concept(_IDENTIFIER_TYPE, "MD", "Medical License number", "医师执业证书编码")
        system = SYSTEM_PHYSICIAN_CERTIFICATE
    else:
        kind = _concept(_IDENTIFIER_TYPE, "PRN", "Provider number", "药师执业证书编码")
        system = SYSTEM_PHARMACIST_CERTIFICATE
    return {
        "resourceType": "Practitioner",
        "id": str(practitioner.pk),
        "identifier": [
            {"type": kind, "system": system, "value": practitioner.practice_certificate_number}
        ],
        "name": [{"use": "official", "text": practitioner.user.display_name}],
        "qualification": [{"code": {"text": practitioner.title}}] if practitioner.title else [],
    }


def _dispensing_pharmacist(*, name: str, licence: str) -> dict[str, Any]:
    """The pharmacy's licensed pharmacist named on the dispense (not one of our users)."""
    return {
        "resourceType": "Practitioner",
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{SYSTEM_LICENSED_PHARMACIST}|{licence}")),
        "identifier": [{"system": SYSTEM_LICENSED_PHARMACIST, "value": licence}],
        "name": [{"text": name}],
    }


# --- What -----------------------------------------------------------------------------------


def _medication(line: PrescriptionLine) -> dict[str, Any]:
    return _concept(
        DRUG_SYSTEMS[line.drug.code_system],
        line.drug_code,
        line.drug_name,
        f"{line.drug_name} {line.specification}",
    )


def _dose_quantity(line: PrescriptionLine) -> dict[str, Any]:
    quantity: dict[str, Any] = {"value": _number(line.dose), "unit": line.dose_unit}
    ucum = _UCUM_UNITS.get(line.dose_unit.strip().lower())
    if ucum:
        quantity.update(system=SYSTEM_UCUM, code=ucum)
    return quantity


def _timing(frequency: str) -> dict[str, Any]:
    known = _FREQUENCIES.get(frequency.strip().lower())
    if known is None:
        return {"code": {"text": frequency}}
    code, times, period, unit = known
    return {
        "repeat": {"frequency": times, "period": period, "periodUnit": unit},
        "code": _concept(_TIMING_ABBREVIATION, code, text=frequency),
    }


def _dosage(line: PrescriptionLine) -> dict[str, Any]:
    parts = [f"{line.dose.normalize():f} {line.dose_unit}", line.frequency, line.route]
    return {
        "sequence": 1,
        "text": ", ".join([p for p in parts if p] + [f"{line.days} d"]),
        "timing": _timing(line.frequency),
        "asNeededBoolean": True if line.frequency.strip().lower() in _AS_NEEDED else None,
        "route": {"text": line.route},
        "doseAndRate": [{"doseQuantity": _dose_quantity(line)}],
    }


def _request_status(
    prescription: Prescription, line: PrescriptionLine
) -> tuple[str, dict[str, Any] | None]:
    """MedicationRequest.status and statusReason (the table in the module docstring)."""
    if prescription.status == S.REVIEW_REJECTED:
        reason = _concept(
            _REQUEST_STATUS_REASON,
            "clarif",
            "Prescription requires clarification",
            prescription.status_reason,
        )
        return "draft", reason
    if prescription.status in (S.CANCELLED, S.EXPIRED):
        text = prescription.status_reason or str(prescription.get_status_display())
        return REQUEST_STATUS[prescription.status], {"text": text}
    if prescription.status in _AFTER_DISPENSE and line.dispensed_quantity < line.quantity:
        text = f"dispensed {line.dispensed_quantity} of {line.quantity} {line.unit}"
        return "stopped", {"text": text}
    return REQUEST_STATUS[prescription.status], None


def _medication_request(
    prescription: Prescription, line: PrescriptionLine, *, refs: dict[str, str]
) -> dict[str, Any]:
    status, reason = _request_status(prescription, line)
    group = f"{prescription.pk}/v{prescription.version}"
    issued_at = _instant(prescription.issued_at) if prescription.issued_at else None
    valid_until = _instant(prescription.valid_until) if prescription.valid_until else None
    return {
        "resourceType": "MedicationRequest",
        "id": refs[f"request/{line.position}"],
        "identifier": [{"system": SYSTEM_PRESCRIPTION_LINE, "value": f"{group}/{line.position}"}],
        "status": status,
        "statusReason": reason,
        "intent": "order",
        "category": [_concept(_REQUEST_CATEGORY, "community", "Community")],
        "medicationCodeableConcept": _medication(line),
        "subject": _ref(refs["patient"]),
        "encounter": {
            "type": "Encounter",
            "identifier": {
                "system": SYSTEM_CONSULTATION,
                "value": str(prescription.consultation_id),
            },
        },
        "authoredOn": issued_at,
        "requester": _ref(refs["doctor"]),
        "reasonCode": [
            _concept(SYSTEM_ICD10, d["icd10"], d.get("name", ""), d.get("name", ""))
            for d in prescription.diagnoses
        ],
        "groupIdentifier": {"system": SYSTEM_PRESCRIPTION, "value": group},
        "note": [{"text": prescription.chronic_reason}],
        "dosageInstruction": [_dosage(line)],
        "dispenseRequest": {
            "validityPeriod": {"start": issued_at, "end": valid_until},
            "numberOfRepeatsAllowed": 0,
            "quantity": {"value": line.quantity, "unit": line.unit},
            "expectedSupplyDuration": {
                "value": line.days,
                "unit": "days",
                "system": SYSTEM_UCUM,
                "code": "d",
            },
            "performer": _ref(refs["pharmacy"]) if "pharmacy" in refs else None,
        },
    }


def _dispense_status(prescription: Prescription) -> tuple[str, dt.datetime | None]:
    """(status, handed over at): a delivery is in progress until it is delivered."""
    if prescription.fulfilment == Fulfilment.DELIVERY:
        if prescription.status == S.DELIVERED:
            return "completed", prescription.delivered_at
        return "in-progress", None
    return "completed", prescription.dispensed_at


def _medication_dispense(
    prescription: Prescription,
    line: PrescriptionLine,
    entries: list[DispenseEntry],
    *,
    refs: dict[str, str],
) -> dict[str, Any]:
    status, handed_over = _dispense_status(prescription)
    checkers = dict.fromkeys(refs[f"pharmacist/{e.pharmacist_licence}"] for e in entries)
    return {
        "resourceType": "MedicationDispense",
        "id": refs[f"dispense/{line.position}"],
        "extension": [
            {
                "url": EXT_DISPENSE_BATCH,
                "extension": [
                    {"url": "lotNumber", "valueString": e.batch_number},
                    {"url": "quantity", "valueQuantity": {"value": e.quantity, "unit": line.unit}},
                ],
            }
            for e in entries
        ],
        "status": status,
        "medicationCodeableConcept": _medication(line),
        "subject": _ref(refs["patient"]),
        "performer": [{"actor": _ref(refs[f"dispenser/{line.position}"])}]
        + [
            {
                "function": _concept(_DISPENSE_PERFORMER, "finalchecker", "Final Checker"),
                "actor": _ref(checker),
            }
            for checker in checkers
        ],
        "authorizingPrescription": [_ref(refs[f"request/{line.position}"])],
        "quantity": {"value": sum(e.quantity for e in entries), "unit": line.unit},
        "whenPrepared": _instant(max(e.created_at for e in entries)),
        "whenHandedOver": _instant(handed_over) if handed_over else None,
    }


# --- Signatures -----------------------------------------------------------------------------


def _signature(
    *,
    kind: tuple[str, str],
    when: str,
    who: str,
    on_behalf_of: str | None,
    algorithm: str,
    value: bytes,
    signed: bytes,
    certificate_pem: str,
) -> dict[str, Any]:
    der = x509.load_pem_x509_certificate(certificate_pem.encode()).public_bytes(Encoding.DER)
    return {
        "extension": [
            {"url": EXT_SIGNATURE_ALGORITHM, "valueCode": algorithm},
            {"url": EXT_SIGNED_CONTENT_SHA256, "valueString": hashlib.sha256(signed).hexdigest()},
            {
                "url": EXT_SIGNATURE_CERTIFICATE,
                "valueAttachment": {"contentType": "application/pkix-cert", "data": _b64(der)},
            },
        ],
        "type": [_coding(SYSTEM_SIGNATURE_TYPE, *kind)],
        "when": when,
        "who": _ref(who),
        "onBehalfOf": _ref(on_behalf_of) if on_behalf_of else None,
        "targetFormat": "application/json",
        "sigFormat": "application/octet-stream",
        "data": _b64(value),
    }


def _provenance(
    *,
    resource_id: str,
    targets: list[str],
    when: str,
    activity: tuple[str, str],
    agents: list[tuple[str, str, str | None]],
    signature: dict[str, Any],
    source: str | None = None,
) -> dict[str, Any]:
    return {
        "resourceType": "Provenance",
        "id": resource_id,
        "target": [_ref(t) for t in targets],
        "occurredDateTime": when,
        "recorded": when,
        "activity": _concept(_DATA_OPERATION, activity[0], text=activity[1]),
        "agent": [
            {
                "type": _concept(_PROVENANCE_AGENT, code, code.capitalize()),
                "who": _ref(who),
                "onBehalfOf": _ref(on_behalf_of) if on_behalf_of else None,
            }
            for code, who, on_behalf_of in agents
        ],
        "entity": [{"role": "source", "what": _ref(source)}] if source else [],
        "signature": [signature],
    }


def _doctor_provenance(
    version: PrescriptionVersion, *, refs: dict[str, str], targets: list[str]
) -> dict[str, Any]:
    when = _instant(version.signed_at)
    return _provenance(
        resource_id=refs["provenance/doctor"],
        targets=targets,
        when=when,
        activity=("CREATE", "prescription signed by the doctor"),
        agents=[("author", refs["doctor"], refs["hospital"])],
        signature=_signature(
            kind=SIGNATURE_AUTHOR,
            when=when,
            who=refs["doctor"],
            on_behalf_of=refs["hospital"],
            algorithm=version.doctor_certificate.algorithm,
            value=bytes(version.doctor_signature),
            signed=bytes(version.signed_bytes),
            certificate_pem=version.doctor_certificate.certificate_pem,
        ),
    )


def _pharmacist_provenance(
    review: _Review, *, refs: dict[str, str], targets: list[str]
) -> dict[str, Any]:
    when = _instant(review.reviewed_at)
    return _provenance(
        resource_id=refs["provenance/pharmacist"],
        targets=targets,
        when=when,
        activity=("ACTIVATE", "prescription approved by the pharmacist's review"),
        agents=[("verifier", refs["pharmacist"], refs["hospital"])],
        source=refs["provenance/doctor"],
        signature=_signature(
            kind=SIGNATURE_VERIFICATION,
            when=when,
            who=refs["pharmacist"],
            on_behalf_of=refs["hospital"],
            algorithm=review.certificate.algorithm,
            value=review.signature,
            signed=review.statement,
            certificate_pem=review.certificate.certificate_pem,
        ),
    )


def _seal_provenance(
    sealed: dict[str, Any], *, refs: dict[str, str], dispenser: str, targets: list[str]
) -> dict[str, Any]:
    """The hospital's seal over the dispense receipt (``Prescription.receipt``, the
    shape of ``prescriptions.signing.sealed_receipt``)."""
    signature = sealed["signature"]
    when = signature["signed_at"]
    return _provenance(
        resource_id=refs["provenance/seal"],
        targets=targets,
        when=when,
        activity=("COMPLETE", "dispense receipt sealed by the hospital"),
        agents=[("performer", dispenser, None), ("custodian", refs["hospital"], None)],
        signature=_signature(
            kind=SIGNATURE_SOURCE,
            when=when,
            who=refs["hospital"],
            on_behalf_of=None,
            algorithm=signature["algorithm"],
            value=base64.b64decode(signature["value"]),
            signed=base64.b64decode(sealed["content"]),
            certificate_pem=signature["certificate_chain"][0],
        ),
    )


# --- The Bundle -----------------------------------------------------------------------------


def prescription_fhir_bundle(*, prescription: Prescription) -> dict[str, Any]:
    """The prescription's current version, its dispenses and signatures as a FHIR R4
    ``collection`` Bundle (see the module docstring). The caller has checked that the
    reader may see the prescription."""
    lines = list(prescription.lines.all())
    version = version_current(prescription=prescription)
    review = _review_of(version)
    ledger: dict[int, list[DispenseEntry]] = defaultdict(list)
    if prescription.status in _AFTER_DISPENSE:
        for entry in DispenseEntry.objects.filter(line__prescription=prescription).select_related(
            "pharmacy"
        ):
            ledger[entry.line_id].append(entry)
    dispensed = [line for line in lines if ledger.get(line.pk)]

    refs: dict[str, str] = {
        "patient": str(prescription.profile_id),
        "hospital": str(prescription.hospital_id),
        "doctor": str(prescription.doctor_id),
    }
    people: list[dict[str, Any]] = [_practitioner(prescription.doctor)]
    if review is not None:
        refs["pharmacist"] = str(review.pharmacist.pk)
        people.append(_practitioner(review.pharmacist))
    pharmacies: dict[str, dict[str, Any]] = {}
    holder = prescription.claimed_by or prescription.dispensed_by
    if holder is not None:
        refs["pharmacy"] = str(holder.pk)
        pharmacies[str(holder.pk)] = _pharmacy(holder)
    for line in lines:
        refs[f"request/{line.position}"] = _derived_id(
            prescription, f"request/v{prescription.version}/{line.position}"
        )
    for line in dispensed:
        refs[f"dispense/{line.position}"] = _derived_id(prescription, f"dispense/{line.position}")
        for entry in ledger[line.pk]:
            refs[f"dispenser/{line.position}"] = str(entry.pharmacy_id)
            pharmacies.setdefault(str(entry.pharmacy_id), _pharmacy(entry.pharmacy))
            checker = _dispensing_pharmacist(
                name=entry.pharmacist_name, licence=entry.pharmacist_licence
            )
            if f"pharmacist/{entry.pharmacist_licence}" not in refs:
                refs[f"pharmacist/{entry.pharmacist_licence}"] = checker["id"]
                people.append(checker)

    requests = [_medication_request(prescription, line, refs=refs) for line in lines]
    dispenses = [
        _medication_dispense(prescription, line, ledger[line.pk], refs=refs) for line in dispensed
    ]
    provenances: list[dict[str, Any]] = []
    request_ids = [r["id"] for r in requests]
    if version is not None:
        refs["provenance/doctor"] = _derived_id(prescription, f"provenance/v{version.version}")
        provenances.append(_doctor_provenance(version, refs=refs, targets=request_ids))
        if review is not None:
            refs["provenance/pharmacist"] = _derived_id(
                prescription, f"provenance/review/v{version.version}"
            )
            provenances.append(_pharmacist_provenance(review, refs=refs, targets=request_ids))
    if dispensed and prescription.receipt:
        refs["provenance/seal"] = _derived_id(prescription, "provenance/receipt")
        provenances.append(
            _seal_provenance(
                prescription.receipt,
                refs=refs,
                dispenser=refs[f"dispenser/{dispensed[0].position}"],
                targets=[d["id"] for d in dispenses],
            )
        )

    resources = [
        _patient(prescription),
        _hospital(prescription.hospital),
        *pharmacies.values(),
        *people,
        *requests,
        *dispenses,
        *provenances,
    ]
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": _instant(timezone.now()),
        "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources],
    }
    pruned: dict[str, Any] = _pruned(bundle)
    return pruned
