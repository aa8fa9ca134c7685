"""Demo data of the consultations context: each demo patient has a prior offline
diagnosis, so a follow-up can be requested right away."""

from __future__ import annotations

import datetime as dt
from typing import Any

from backend.demo.seeding import DemoContext
from consultations.models import PriorDiagnosis
from consultations.services import icd10_resolve

RECORDS = {
    "zhang": ("浙江大学医学院附属第一医院", dt.date(2024, 11, 5), "I10", "原发性高血压 2级"),
    "liu": ("杭州市第一人民医院", dt.date(2025, 2, 18), "E11.9", "2型糖尿病"),
    "liu_child": ("浙江大学医学院附属儿童医院", dt.date(2025, 9, 2), "J45.9", "支气管哮喘"),
}


def seed(context: DemoContext) -> dict[str, Any]:
    out = {}
    for key, (institution, when, code, text) in RECORDS.items():
        profile = context.profiles[key]
        record = PriorDiagnosis.objects.filter(profile=profile, icd10_code=code).first()
        if record is None:
            entry = icd10_resolve(code=code)
            record = PriorDiagnosis.objects.create(
                profile=profile,
                institution=institution,
                diagnosed_on=when,
                icd10_code=entry.code,
                icd10_name=entry.display_name,
                diagnosis_text=text,
                created_by=profile.account,
            )
        out[key] = str(record.pk)
    return {"prior_diagnoses": out}
