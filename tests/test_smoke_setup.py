import pytest
from django.conf import settings


def test_settings_are_demo_and_shanghai():
    assert settings.DEMO_MODE is True
    assert settings.TIME_ZONE == "Asia/Shanghai"
    assert settings.USE_TZ is True


@pytest.mark.django_db
def test_factories(doctor, patient):
    assert doctor.practitioner.hospital is not None
    assert patient.phone.startswith("139")
