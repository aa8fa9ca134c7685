"""ID and phone numbers are encrypted at rest and found through blind indexes."""

from __future__ import annotations

import base64
import secrets

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import override_settings

from backend.crypto.fields import blind_index_for
from backend.crypto.keyring import DecryptionError
from backend.demo.seeding import resident_id
from backend.patients.models import PatientProfile
from backend.patients.selectors import patient_profile_find_by_id_number
from tests.factories import PatientProfileFactory

pytestmark = pytest.mark.django_db

ID_NUMBER = resident_id("11010519491231002")
PHONE = "13912345678"


def _raw_row(profile: PatientProfile) -> dict[str, str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id_number, id_number_index, phone, phone_index "
            "FROM patients_patientprofile WHERE id = %s",
            [profile.pk.hex if connection.vendor == "sqlite" else profile.pk],
        )
        row = cursor.fetchone()
    assert row is not None
    return dict(zip(["id_number", "id_number_index", "phone", "phone_index"], row, strict=True))


def test_the_database_row_holds_no_plaintext():
    profile = PatientProfileFactory(id_number=ID_NUMBER, phone=PHONE)
    raw = _raw_row(profile)
    everything = " ".join(str(v) for v in raw.values())
    assert ID_NUMBER not in everything
    assert ID_NUMBER[-6:] not in everything  # not even a suffix
    assert PHONE not in everything
    assert raw["id_number"].startswith("v1:demo1:") or raw["id_number"].startswith("v1:")
    # Reading through the model gives the plaintext back.
    reloaded = PatientProfile.objects.get(pk=profile.pk)
    assert reloaded.id_number == ID_NUMBER
    assert reloaded.phone == PHONE


def test_same_value_encrypts_differently_each_time_but_indexes_equally():
    a = PatientProfileFactory(phone=PHONE)
    b = PatientProfileFactory(phone=f"+86 {PHONE[:3]} {PHONE[3:7]} {PHONE[7:]}")
    raw_a, raw_b = _raw_row(a), _raw_row(b)
    assert raw_a["phone"] != raw_b["phone"]  # random nonce per value
    assert raw_a["phone_index"] == raw_b["phone_index"]  # same normalised number
    assert raw_a["id_number_index"] != raw_b["id_number_index"]


def test_blind_index_finds_a_profile_by_exact_id_number_ignoring_case_and_blanks():
    number = resident_id("11010519491231001")  # check character may be X
    profile = PatientProfileFactory(id_number=number)
    PatientProfileFactory(id_number=ID_NUMBER)
    found = patient_profile_find_by_id_number(
        id_type="resident_id", id_number=f"  {number.lower()} "
    )
    assert found == profile
    assert (
        patient_profile_find_by_id_number(id_type="resident_id", id_number="110105194912310000")
        is None
    )


def test_encrypted_fields_refuse_plaintext_lookups():
    with pytest.raises(TypeError, match="blind index"):
        PatientProfile.objects.filter(id_number=ID_NUMBER).exists()


def test_a_ciphertext_copied_into_another_column_does_not_decrypt():
    profile = PatientProfileFactory(id_number=ID_NUMBER, phone=PHONE)
    raw = _raw_row(profile)
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE patients_patientprofile SET phone = %s WHERE id = %s",
            [raw["id_number"], profile.pk.hex if connection.vendor == "sqlite" else profile.pk],
        )
    with pytest.raises(DecryptionError):
        PatientProfile.objects.get(pk=profile.pk)


def test_key_rotation_keeps_old_rows_readable_and_rewrites_them(settings):
    profile = PatientProfileFactory(id_number=ID_NUMBER, phone=PHONE)
    old_keys = settings.FIELD_ENCRYPTION_KEYS
    old_id = old_keys.split(":", 1)[0]
    new_key = "k2:" + base64.b64encode(secrets.token_bytes(32)).decode()
    with override_settings(FIELD_ENCRYPTION_KEYS=f"{new_key},{old_keys}"):
        # Old rows still decrypt with the old key listed second...
        assert PatientProfile.objects.get(pk=profile.pk).id_number == ID_NUMBER
        assert _raw_row(profile)["id_number"].startswith(f"v1:{old_id}:")
        call_command("rotate_field_keys", stdout=open("/dev/null", "w"))  # noqa: SIM115
        # ...and after rotation everything is under the new key.
        raw = _raw_row(profile)
        assert raw["id_number"].startswith("v1:k2:")
        assert raw["phone"].startswith("v1:k2:")
        with override_settings(FIELD_ENCRYPTION_KEYS=new_key):
            reloaded = PatientProfile.objects.get(pk=profile.pk)
            assert reloaded.id_number == ID_NUMBER
            # The blind index has its own key, so lookups still work after rotation.
            assert reloaded.id_number_index == blind_index_for(
                PatientProfile, "id_number", ID_NUMBER
            )


def test_without_the_right_key_nothing_decrypts(settings):
    profile = PatientProfileFactory(id_number=ID_NUMBER)
    stranger = "demo1:" + base64.b64encode(secrets.token_bytes(32)).decode()
    with override_settings(FIELD_ENCRYPTION_KEYS=stranger), pytest.raises(DecryptionError):
        PatientProfile.objects.get(pk=profile.pk)
