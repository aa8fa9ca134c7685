"""factory_boy factories for the kernel's models, with valid identifiers."""

from __future__ import annotations

import datetime as dt
from typing import Any

import factory
from django.utils import timezone

from backend.demo.seeding import resident_id
from backend.identity.models import Role, User
from backend.identity.services import totp_enrol
from backend.organisations.models import (
    Department,
    FilingStatus,
    Hospital,
    Pharmacy,
    Practitioner,
    PractitionerKind,
    Province,
)
from backend.organisations.validators import uscc_check_character
from backend.patients.models import IdDocumentType, PatientProfile, Relation, Sex

PASSWORD = "correct-horse-battery-9"


class ProvinceFactory(factory.django.DjangoModelFactory[Province]):
    class Meta:
        model = Province
        django_get_or_create = ("code",)

    code = "330000"
    name = "浙江省"
    regulator_name = "浙江省卫生健康委员会"


def _uscc(n: int) -> str:
    first17 = f"1233000047{n:07d}"
    return first17 + uscc_check_character(first17)


class HospitalFactory(factory.django.DjangoModelFactory[Hospital]):
    class Meta:
        model = Hospital

    name = factory.Sequence(lambda n: f"测试医院{n}")
    province = factory.SubFactory(ProvinceFactory)
    unified_social_credit_code = factory.Sequence(_uscc)
    practice_licence_number = factory.Sequence(lambda n: f"PDY{n:08d}")
    practice_licence_valid_until = dt.date(2035, 1, 1)


class DepartmentFactory(factory.django.DjangoModelFactory[Department]):
    class Meta:
        model = Department

    hospital = factory.SubFactory(HospitalFactory)
    code = factory.Sequence(lambda n: f"D{n:03d}")
    name = factory.Sequence(lambda n: f"科室{n}")


class UserFactory(factory.django.DjangoModelFactory[User]):
    class Meta:
        model = User
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    role = Role.ADMINISTRATOR
    display_name = factory.Sequence(lambda n: f"用户{n}")

    @factory.post_generation
    def password(obj: User, create: bool, extracted: Any, **kwargs: Any) -> None:  # noqa: N805
        obj.set_password(extracted or PASSWORD)
        if create:
            obj.save(update_fields=["password"])


class PractitionerFactory(factory.django.DjangoModelFactory[Practitioner]):
    class Meta:
        model = Practitioner
        skip_postgeneration_save = True

    user = factory.SubFactory(UserFactory, role=Role.DOCTOR)
    kind = PractitionerKind.DOCTOR
    hospital = factory.SubFactory(HospitalFactory)
    department = factory.SubFactory(DepartmentFactory, hospital=factory.SelfAttribute("..hospital"))
    practice_certificate_number = factory.Sequence(lambda n: f"D{n:015d}")
    qualification_certificate_number = factory.Sequence(lambda n: f"Q{n:015d}")
    title = "主治医师"
    practice_start_date = dt.date(2015, 7, 1)
    filing_status = FilingStatus.FILED
    licence_valid_until = dt.date(2035, 1, 1)

    @factory.post_generation
    def totp(obj: Practitioner, create: bool, extracted: Any, **kwargs: Any) -> None:  # noqa: N805
        if create and extracted is not False:
            totp_enrol(user=obj.user)


class PharmacyFactory(factory.django.DjangoModelFactory[Pharmacy]):
    class Meta:
        model = Pharmacy

    code = factory.Sequence(lambda n: f"PH{n:05d}")
    name = factory.Sequence(lambda n: f"药房{n}")
    province = factory.SubFactory(ProvinceFactory)


class PatientFactory(UserFactory):
    role = Role.PATIENT
    phone = factory.Sequence(lambda n: f"139{n:08d}")


class PatientProfileFactory(factory.django.DjangoModelFactory[PatientProfile]):
    class Meta:
        model = PatientProfile

    account = factory.SubFactory(PatientFactory)
    relation = Relation.SELF
    real_name = "张三"
    id_type = IdDocumentType.RESIDENT_ID
    id_number = factory.Sequence(
        lambda n: resident_id(f"330106198001{n % 28 + 1:02d}{n % 900 + 100:03d}")
    )
    birth_date = dt.date(1980, 1, 1)
    sex = Sex.MALE
    sensitive_data_consent_at = factory.LazyFunction(timezone.now)
