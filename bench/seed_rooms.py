"""Creates N consultations in progress (a patient and a doctor each) and a WebSocket
ticket per participant, and prints them as JSON. Bench set-up only: it writes rows in
bulk instead of going through the services, so that 1,000 rooms take seconds."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
import sys
import uuid

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "backend.settings")
os.environ.setdefault("DEMO_MODE", "1")

import django

django.setup()

from django.db import transaction
from django.utils import timezone

from backend.identity.models import Role, User, WsTicket
from backend.organisations.models import (
    Department,
    FilingStatus,
    Hospital,
    Practitioner,
    Province,
)
from backend.organisations.validators import uscc_check_character
from backend.patients.models import PatientProfile
from consultations.models import Consultation, PriorDiagnosis


def _ticket(user: User, path: str, rows: list[WsTicket]) -> str:
    ticket = secrets.token_urlsafe(24)
    now = timezone.now()
    rows.append(
        WsTicket(
            ticket_hash=hashlib.sha256(ticket.encode()).hexdigest(),
            user=user,
            path=path,
            created_at=now,
            expires_at=now + dt.timedelta(hours=2),
        )
    )
    return ticket


@transaction.atomic
def seed(n: int) -> list[dict[str, str]]:
    province, _ = Province.objects.get_or_create(
        code="990000", defaults={"name": "Bench", "regulator_name": "Bench regulator"}
    )
    first17 = f"12990000{uuid.uuid4().int % 10**9:09d}"
    hospital = Hospital.objects.create(
        name="Bench hospital",
        province=province,
        unified_social_credit_code=first17 + uscc_check_character(first17),
        practice_licence_number="BENCH",
        practice_licence_valid_until=dt.date(2040, 1, 1),
    )
    department = Department.objects.create(hospital=hospital, code="B1", name="Bench")
    tag = uuid.uuid4().hex[:8]
    users = User.objects.bulk_create(
        [User(username=f"bench-{tag}-d{i}", role=Role.DOCTOR) for i in range(n)]
        + [User(username=f"bench-{tag}-p{i}", role=Role.PATIENT) for i in range(n)]
    )
    doctors, patients = users[:n], users[n:]
    practitioners = Practitioner.objects.bulk_create(
        [
            Practitioner(
                user=d,
                kind="doctor",
                hospital=hospital,
                department=department,
                practice_certificate_number=f"B{tag}{i:06d}",
                qualification_certificate_number="Q",
                title="主治医师",
                practice_start_date=dt.date(2010, 1, 1),
                filing_status=FilingStatus.FILED,
                licence_valid_until=dt.date(2040, 1, 1),
            )
            for i, d in enumerate(doctors)
        ]
    )
    profiles = [
        PatientProfile(
            account=p,
            real_name="测试",
            id_type="passport",
            id_number=f"BENCH{tag}{i}",
            birth_date=dt.date(1970, 1, 1),
            sex="male",
        )
        for i, p in enumerate(patients)
    ]
    for profile in profiles:  # bulk_create skips pre_save: fill the blind index here
        profile.id_number_index = (
            type(profile)._meta.get_field("id_number_index").pre_save(profile, True)
        )
    PatientProfile.objects.bulk_create(profiles)
    records = PriorDiagnosis.objects.bulk_create(
        [
            PriorDiagnosis(
                profile=pr,
                institution="Bench",
                diagnosed_on=dt.date(2024, 1, 1),
                icd10_code="I10",
                icd10_name="原发性高血压",
                created_by=pr.account,
            )
            for pr in profiles
        ]
    )
    now = timezone.now()
    consultations = Consultation.objects.bulk_create(
        [
            Consultation(
                profile=pr,
                account=pr.account,
                hospital=hospital,
                department=department,
                doctor=doc,
                prior_diagnosis=rec,
                status="in_progress",
                requested_at=now,
                expires_at=now + dt.timedelta(days=1),
                accepted_at=now,
            )
            for pr, doc, rec in zip(profiles, practitioners, records, strict=True)
        ]
    )
    tickets: list[WsTicket] = []
    rooms = []
    for c, patient, doctor in zip(consultations, patients, doctors, strict=True):
        path = f"/ws/consultations/{c.pk}/"
        rooms.append(
            {
                "room": str(c.pk),
                "patient": _ticket(patient, path, tickets),
                "doctor": _ticket(doctor, path, tickets),
            }
        )
    WsTicket.objects.bulk_create(tickets)
    return rooms


if __name__ == "__main__":
    json.dump(seed(int(sys.argv[1])), sys.stdout)
