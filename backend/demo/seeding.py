"""Demo data for the kernel: a province and its regulator, a hospital with two
departments, two doctors, a pharmacist, a retail pharmacy with staff, an administrator
and two patients (one with a dependent child).

Apps add their own demo data in a ``demo_seed`` module with a ``seed(context)``
function (prior diagnoses, the drug catalogue...), found by ``seed_demo`` at run time,
so the kernel imports no app. Everything is created with get-or-create: running the
seed again changes nothing but the printed API tokens, which are re-issued.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from backend.identity.models import ApiToken, Role, User
from backend.identity.services import api_token_create, tokens_issue, totp_enrol
from backend.organisations.models import (
    Department,
    FilingStatus,
    Hospital,
    HospitalAdministrator,
    Pharmacy,
    PharmacyStaff,
    Practitioner,
    PractitionerKind,
    Province,
    RegulatorOfficial,
)
from backend.organisations.validators import uscc_check_character
from backend.patients.models import IdDocumentType, PatientProfile, Relation, Sex
from backend.patients.validators import _CHECK, _WEIGHTS

DEMO_TOKEN_NAME = "demo"


def demo_password(username: str) -> str:
    """Stable per installation (derived from its secret key), never shipped in git."""
    digest = hmac.new(
        settings.SECRET_KEY.encode(), f"demo-password:{username}".encode(), hashlib.sha256
    ).hexdigest()
    return f"Demo-{digest[:12]}"


def resident_id(prefix17: str) -> str:
    total = sum(int(ch) * w for ch, w in zip(prefix17, _WEIGHTS, strict=True))
    return prefix17 + _CHECK[total % 11]


@dataclass
class DemoContext:
    """What the kernel seeded, for the apps' ``demo_seed`` modules to build on."""

    province: Province
    hospital: Hospital
    departments: dict[str, Department]
    doctors: list[User]
    pharmacist: User
    pharmacy: Pharmacy
    patients: list[User]
    profiles: dict[str, PatientProfile]
    output: dict[str, Any] = field(default_factory=dict)


def _user(
    username: str, role: str, display_name: str, *, phone: str | None = None, staff: bool = False
) -> User:
    user = User.objects.filter(username=username).first()
    if user is None:
        user = User.objects.create_user(
            username=username,
            password=demo_password(username),
            role=role,
            display_name=display_name,
            phone=phone,
            is_staff=staff,
        )
    return user


def _practitioner(
    user: User,
    *,
    kind: str,
    hospital: Hospital,
    department: Department | None,
    cert: str,
    title: str,
    years: int,
) -> Practitioner:
    today = timezone.localdate()
    practitioner, _ = Practitioner.objects.get_or_create(
        user=user,
        defaults={
            "kind": kind,
            "hospital": hospital,
            "department": department,
            "practice_certificate_number": cert,
            "qualification_certificate_number": "Q" + cert[1:],
            "title": title,
            "practice_start_date": today.replace(year=today.year - years, day=1),
            "filing_status": FilingStatus.FILED,
            "filed_at": timezone.now(),
            "licence_valid_until": today.replace(year=today.year + 3),
        },
    )
    if not user.totp_secret:
        totp_enrol(user=user)
    return practitioner


def _profile(
    account: User,
    *,
    relation: str,
    real_name: str,
    id17: str,
    birth: dt.date,
    sex: str,
    phone: str | None,
    allergies: list[str],
) -> PatientProfile:
    existing = PatientProfile.objects.filter(account=account, real_name=real_name).first()
    if existing is not None:
        return existing
    return PatientProfile.objects.create(
        account=account,
        relation=relation,
        real_name=real_name,
        id_type=IdDocumentType.RESIDENT_ID,
        id_number=resident_id(id17),
        birth_date=birth,
        sex=sex,
        phone=phone,
        allergies=allergies,
        sensitive_data_consent_at=timezone.now(),
    )


@transaction.atomic
def seed_kernel() -> DemoContext:
    province, _ = Province.objects.get_or_create(
        code="330000", defaults={"name": "浙江省", "regulator_name": "浙江省卫生健康委员会"}
    )
    uscc17 = "12330000470000001"
    hospital, _ = Hospital.objects.get_or_create(
        unified_social_credit_code=uscc17 + uscc_check_character(uscc17),
        defaults={
            "name": "示范互联网医院",
            "province": province,
            "practice_licence_number": "PDY00001233010011A1001",
            "practice_licence_valid_until": dt.date(2031, 12, 31),
            "internet_hospital_licence_number": "浙卫互医 2024-001",
            "internet_hospital_licence_valid_until": dt.date(2029, 12, 31),
            "platform_id": "ZJ-IH-0001",
        },
    )
    departments = {}
    for code, name in (("03", "内科"), ("0301", "心血管内科")):
        departments[code], _ = Department.objects.get_or_create(
            hospital=hospital, code=code, defaults={"name": name}
        )
    doctor1 = _user("dr.li", Role.DOCTOR, "李医生")
    doctor2 = _user("dr.wang", Role.DOCTOR, "王医生")
    pharmacist = _user("ph.zhao", Role.PHARMACIST, "赵药师")
    _practitioner(
        doctor1,
        kind=PractitionerKind.DOCTOR,
        hospital=hospital,
        department=departments["03"],
        cert="D110330000000001",
        title="主治医师",
        years=8,
    )
    _practitioner(
        doctor2,
        kind=PractitionerKind.DOCTOR,
        hospital=hospital,
        department=departments["0301"],
        cert="D110330000000002",
        title="副主任医师",
        years=15,
    )
    _practitioner(
        pharmacist,
        kind=PractitionerKind.PHARMACIST,
        hospital=hospital,
        department=None,
        cert="P110330000000001",
        title="主管药师",
        years=10,
    )

    pharmacy, _ = Pharmacy.objects.get_or_create(
        code="ZJ-PH-0001",
        defaults={
            "name": "健康大药房（文三路店）",
            "province": province,
            "address": "杭州市西湖区文三路 100 号",
        },
    )
    pharmacy_user = _user("pharmacy.chen", Role.PHARMACY_STAFF, "陈药师（零售）")
    PharmacyStaff.objects.get_or_create(
        user=pharmacy_user, defaults={"pharmacy": pharmacy, "is_licensed_pharmacist": True}
    )
    regulator = _user("reg.zhou", Role.REGULATOR, "周监管员")
    RegulatorOfficial.objects.get_or_create(user=regulator, defaults={"province": province})
    admin = _user("admin", Role.ADMINISTRATOR, "医院管理员", staff=True)
    if not admin.is_superuser:
        admin.is_superuser = True
        admin.save(update_fields=["is_superuser"])
    HospitalAdministrator.objects.get_or_create(user=admin, defaults={"hospital": hospital})

    patient1 = _user("patient.zhang", Role.PATIENT, "张先生", phone="13800000001")
    patient2 = _user("patient.liu", Role.PATIENT, "刘女士", phone="13800000002")
    profiles = {
        "zhang": _profile(
            patient1,
            relation=Relation.SELF,
            real_name="张伟",
            id17="33010619650314123",
            birth=dt.date(1965, 3, 14),
            sex=Sex.MALE,
            phone="13800000001",
            allergies=["青霉素"],
        ),
        "liu": _profile(
            patient2,
            relation=Relation.SELF,
            real_name="刘芳",
            id17="33010219880920234",
            birth=dt.date(1988, 9, 20),
            sex=Sex.FEMALE,
            phone="13800000002",
            allergies=[],
        ),
        "liu_child": _profile(
            patient2,
            relation=Relation.CHILD,
            real_name="刘小宝",
            id17="33010220220105345",
            birth=dt.date(2022, 1, 5),
            sex=Sex.MALE,
            phone=None,
            allergies=["头孢类"],
        ),
    }
    return DemoContext(
        province=province,
        hospital=hospital,
        departments=departments,
        doctors=[doctor1, doctor2],
        pharmacist=pharmacist,
        pharmacy=pharmacy,
        patients=[patient1, patient2],
        profiles=profiles,
    )


def demo_accounts() -> list[User]:
    usernames = [
        "dr.li",
        "dr.wang",
        "ph.zhao",
        "pharmacy.chen",
        "reg.zhou",
        "admin",
        "patient.zhang",
        "patient.liu",
    ]
    by_name = {u.username: u for u in User.objects.filter(username__in=usernames)}
    return [by_name[name] for name in usernames if name in by_name]


@transaction.atomic
def demo_credentials(context: DemoContext) -> dict[str, Any]:
    """Logins, fresh API tokens (older demo tokens are revoked) and TOTP secrets."""
    now = timezone.now()
    accounts: list[dict[str, Any]] = []
    tokens: dict[str, str] = {}
    for user in demo_accounts():
        ApiToken.objects.filter(user=user, name=DEMO_TOKEN_NAME, revoked_at__isnull=True).update(
            revoked_at=now
        )
        issued = api_token_create(user=user, name=DEMO_TOKEN_NAME)
        entry: dict[str, Any] = {
            "username": user.username,
            "password": demo_password(user.username),
            "role": user.role,
            "display_name": user.display_name,
            "api_token": issued.key,
        }
        if user.phone:
            entry["phone"] = user.phone
        if user.totp_secret:
            entry["totp_secret"] = user.totp_secret
        if user.role == Role.PATIENT:
            pair = tokens_issue(user=user)
            entry["jwt"] = {"access": pair.access, "refresh": pair.refresh}
        accounts.append(entry)
        tokens.setdefault(user.role, issued.key)
    return {
        "accounts": accounts,
        "tokens": tokens,
        "hospital": {
            "id": str(context.hospital.pk),
            "name": context.hospital.name,
            "departments": {c: str(d.pk) for c, d in context.departments.items()},
        },
        "pharmacy": {"id": str(context.pharmacy.pk), "code": context.pharmacy.code},
        "patients": {
            key: {
                "profile_id": str(p.pk),
                "account": str(p.account_id),
                "real_name": p.real_name,
                "relation": p.relation,
            }
            for key, p in context.profiles.items()
        },
    }
