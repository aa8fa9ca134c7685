"""Reads for regulator officials, each scoped to the official's province, and the
monitoring indicators of DOMAIN.md computed from the records the platform received.

The indicators are computed from the reported records (the outbox payloads), not from
the business tables: that is what the regulator sees, and this app knows nothing of
consultations or prescriptions (dependencies point one way).
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections import defaultdict
from typing import Any
from uuid import UUID

from django.db.models import QuerySet

from backend.api.problems import DomainError
from backend.identity.models import User
from backend.organisations.models import Province, RegulatorOfficial
from regulators.models import Alert, OutboxRecord, RecordStatus


def province_of_official(*, user: User) -> Province:
    official = RegulatorOfficial.objects.select_related("province").filter(user=user).first()
    if official is None:
        raise DomainError("not_a_regulator")
    return official.province


def received_records(
    *,
    province: Province,
    record_type: str | None = None,
    hospital: UUID | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> QuerySet[OutboxRecord]:
    """Records the platform acknowledged, in feed order."""
    qs = OutboxRecord.objects.filter(
        province=province, status=RecordStatus.ACKNOWLEDGED
    ).select_related("hospital")
    if record_type:
        qs = qs.filter(record_type__startswith=record_type)
    if hospital:
        qs = qs.filter(hospital_id=hospital)
    if since:
        qs = qs.filter(occurred_at__gte=since)
    if until:
        qs = qs.filter(occurred_at__lt=until)
    return qs


def feed_after(*, province: Province, after: int, limit: int = 500) -> list[OutboxRecord]:
    return list(
        OutboxRecord.objects.filter(province=province, feed_seq__gt=after)
        .select_related("hospital")
        .order_by("feed_seq")[:limit]
    )


def alerts_of(
    *,
    province: Province,
    kind: str | None = None,
    hospital: UUID | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> QuerySet[Alert]:
    qs = Alert.objects.filter(province=province).select_related("hospital")
    if kind:
        qs = qs.filter(kind=kind)
    if hospital:
        qs = qs.filter(hospital_id=hospital)
    if since:
        qs = qs.filter(created_at__gte=since)
    if until:
        qs = qs.filter(created_at__lt=until)
    return qs


# --- Indicators -------------------------------------------------------------------------------


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)).total_seconds()


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(share * (len(ordered) - 1))))
    return round(ordered[index], 3)


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _age_on(birth: str, day: dt.date) -> int:
    born = dt.date.fromisoformat(birth)
    return day.year - born.year - ((day.month, day.day) < (born.month, born.day))


def _empty() -> dict[str, Any]:
    return {
        "consultations_requested": 0,
        "consultations_answered": 0,
        "consultations_expired_unanswered": 0,
        "time_to_accept_seconds": {"median": None, "p95": None},
        "first_visits_refused": 0,
        "referred_offline": 0,
        "prescriptions_issued": 0,
        "prescriptions_reviewed": 0,
        "prescriptions_rejected_by_review": 0,
        "prescriptions_revoked": 0,
        "prescriptions_dispensed": 0,
        "dispensed_before_review_share": 0.0,
        "prescriber_not_consulting_doctor": 0,
        "controlled_drug_attempts_refused": 0,
        "children_under_6_without_guardian": 0,
        "supply_over_7_days_without_reason": 0,
        "upload_delay_seconds": {"median": None, "p95": None, "max": None},
        "upload_failures": 0,
    }


def indicators(
    *,
    province: Province,
    since: dt.datetime,
    until: dt.datetime,
    hospital: UUID | None = None,
    by: str = "hospital",
) -> list[dict[str, Any]]:
    """DOMAIN.md "Monitoring indicators" per hospital (``by="hospital"``) or per doctor
    (``by="doctor"``, keyed by practice certificate number) over [since, until)."""
    records = OutboxRecord.objects.filter(
        province=province, occurred_at__gte=since, occurred_at__lt=until
    ).select_related("hospital")
    if hospital:
        records = records.filter(hospital_id=hospital)
    rows: dict[tuple[str, str], dict[str, Any]] = defaultdict(_empty)
    accept_times: dict[tuple[str, str], list[float]] = defaultdict(list)
    delays: dict[tuple[str, str], list[float]] = defaultdict(list)
    consultation_doctor: dict[str, str] = {}
    reviewed_pass: set[str] = set()
    issued_ids: dict[tuple[str, str], set[str]] = defaultdict(set)
    names: dict[str, str] = {}
    ordered = list(records.order_by("id"))
    for record in ordered:
        if record.record_type.startswith("consultation.") and (
            record.status == RecordStatus.ACKNOWLEDGED
        ):
            doctor = (record.payload.get("doctor") or {}).get("practice_certificate_number")
            if doctor:
                consultation_doctor[record.payload["consultation_id"]] = doctor

    def key(record: OutboxRecord, doctor: str | None) -> tuple[str, str]:
        hospital_id = str(record.hospital_id)
        names[hospital_id] = record.hospital.name
        return (hospital_id, (doctor or "") if by == "doctor" else "")

    for record in ordered:
        payload = record.payload
        kind = record.record_type
        doctor_ref = (payload.get("doctor") or {}).get("practice_certificate_number")
        if kind == "review":
            doctor_ref = None
        k = key(record, doctor_ref)
        row = rows[k]
        if record.status == RecordStatus.DEAD:
            row["upload_failures"] += 1
        if record.status != RecordStatus.ACKNOWLEDGED:
            continue  # the platform has not received it: it counts only as a failure
        if record.acknowledged_at is not None:
            delays[k].append((record.acknowledged_at - record.created_at).total_seconds())
        if kind == "consultation.requested":
            row["consultations_requested"] += 1
        elif kind == "consultation.accepted":
            row["consultations_answered"] += 1
            waited = _seconds(payload.get("requested_at"), payload.get("accepted_at"))
            if waited is not None:
                accept_times[k].append(waited)
        elif kind == "consultation.expired":
            row["consultations_expired_unanswered"] += 1
        elif kind == "consultation.first_visit_refused":
            row["first_visits_refused"] += 1
        elif kind == "consultation.referred_offline":
            row["referred_offline"] += 1
        elif kind == "prescription.issued":
            # A version signed again after a rejection is the same prescription.
            if payload["prescription_id"] not in issued_ids[k]:
                issued_ids[k].add(payload["prescription_id"])
                row["prescriptions_issued"] += 1
            treating = consultation_doctor.get(payload["consultation_id"])
            if treating is not None and treating != doctor_ref:
                row["prescriber_not_consulting_doctor"] += 1
            birth = payload.get("patient_birth_date")
            issued = dt.datetime.fromisoformat(payload["issued_at"]).date()
            if birth and _age_on(birth, issued) < 6 and not payload.get("guardian"):
                row["children_under_6_without_guardian"] += 1
            if not payload.get("chronic_reason") and any(
                line["days"] > 7 for line in payload["lines"]
            ):
                row["supply_over_7_days_without_reason"] += 1
        elif kind == "prescription.revoked":
            row["prescriptions_revoked"] += 1
        elif kind == "review":
            row["prescriptions_reviewed"] += 1
            if payload["result"] == "fail":
                row["prescriptions_rejected_by_review"] += 1
            else:
                reviewed_pass.add(payload["prescription_id"])
        elif kind == "dispense.dispense":
            row["prescriptions_dispensed"] += 1
            if payload["prescription_id"] not in reviewed_pass:
                row.setdefault("_dispensed_unreviewed", 0)
                row["_dispensed_unreviewed"] += 1
        elif kind == "alert" and payload.get("kind") == "controlled_drug":
            attempt_doctor = (payload.get("details", {}).get("doctor") or {}).get(
                "practice_certificate_number"
            )
            rows[key(record, attempt_doctor)]["controlled_drug_attempts_refused"] += 1
    out = []
    for (hospital_id, doctor), row in sorted(rows.items()):
        unreviewed = row.pop("_dispensed_unreviewed", 0)
        if row["prescriptions_dispensed"]:
            row["dispensed_before_review_share"] = round(
                unreviewed / row["prescriptions_dispensed"], 4
            )
        times = accept_times[(hospital_id, doctor)]
        row["time_to_accept_seconds"] = {
            "median": _median(times),
            "p95": _percentile(times, 0.95),
        }
        waits = delays[(hospital_id, doctor)]
        row["upload_delay_seconds"] = {
            "median": _median(waits),
            "p95": _percentile(waits, 0.95),
            "max": round(max(waits), 3) if waits else None,
        }
        out.append(
            {
                "hospital": hospital_id,
                "hospital_name": names.get(hospital_id, ""),
                "doctor": doctor or None,
                "since": since.isoformat(),
                "until": until.isoformat(),
                **row,
            }
        )
    return out
