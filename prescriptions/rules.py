"""The prescribing rules of DOMAIN.md (rules 7–9 and the doctor's warnings), as checks.

``prescription_checks`` evaluates every rule on a draft and returns one ``Check`` per rule
(and per offending line), so the console can show the doctor, as they type, which rule
passes, warns or blocks. Blocking checks carry the stable error code the services raise.
The treating-doctor and signature rules (5, 6) are enforced by the services themselves.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

from django.conf import settings

from backend.api.problems import DomainError
from backend.patients.models import PatientProfile
from backend.patients.selectors import age_on
from prescriptions.models import Drug


@dataclass(frozen=True)
class LineDraft:
    drug: Drug
    dose: Decimal
    dose_unit: str
    frequency: str
    route: str
    days: int
    quantity: int


@dataclass(frozen=True)
class Check:
    rule: str
    name: str
    outcome: str  # "pass", "warning" or "error"
    message: str
    line: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


RULE_NAMES = {
    "controlled_drug_forbidden": "特殊管理药品不得在线开具 (No specially controlled drugs online)",
    "validity_too_long": "处方有效期不超过3天 (Validity at most 3 days)",
    "supply_too_long": "用量一般不超过7日，慢性病需注明理由 (Supply limit)",
    "guardian_required": "6岁以下儿童须监护人和相关专业医师陪伴 (Child under 6)",
    "duplicate_drug": "重复用药 (Duplicate drug)",
    "allergy_conflict": "过敏史冲突 (Known allergy)",
}


#: Doses a day per frequency code (the ones with a fixed schedule; ``prn``, as needed, has
#: none, so its supply is the line's days).
_DOSES_PER_DAY: dict[str, Fraction] = {
    "qd": Fraction(1),
    "qn": Fraction(1),
    "bid": Fraction(2),
    "tid": Fraction(3),
    "qid": Fraction(4),
    "qod": Fraction(1, 2),
    "qw": Fraction(1, 7),
    **{f"q{n}h": Fraction(24, n) for n in (1, 2, 3, 4, 6, 8, 12)},
}
#: Mass units in milligrams, to compare a dose with a unit's strength.
_MILLIGRAMS = {
    "g": Decimal(1000),
    "mg": Decimal(1),
    "μg": Decimal("0.001"),
    "ug": Decimal("0.001"),
    "mcg": Decimal("0.001"),
}
#: Dose units that count the smallest units themselves (one tablet, one puff…).
_COUNTED = frozenset({"片", "粒", "丸", "吸", "揿", "喷", "袋", "贴", "枚"})


def _units_per_dose(line: LineDraft) -> Fraction | None:
    """How many of the drug's smallest units one dose takes, when the catalogue says."""
    drug, unit = line.drug, line.dose_unit.strip().lower()
    if line.dose_unit.strip() in _COUNTED:
        return Fraction(line.dose)
    if unit in _MILLIGRAMS and drug.unit_strength and drug.strength_unit.lower() in _MILLIGRAMS:
        dose_mg = line.dose * _MILLIGRAMS[unit]
        strength_mg = drug.unit_strength * _MILLIGRAMS[drug.strength_unit.lower()]
        return Fraction(dose_mg) / Fraction(strength_mg)
    return None


def _days_supplied(line: LineDraft) -> tuple[int, int] | None:
    """(packs the line's days need, whole days its quantity lasts), when the catalogue
    knows the pack and the frequency has a fixed schedule; otherwise None."""
    per_day = _DOSES_PER_DAY.get(line.frequency.strip().lower())
    per_dose = _units_per_dose(line)
    pack = line.drug.pack_size
    if per_day is None or per_dose is None or not pack or per_dose <= 0:
        return None
    per_day_units = per_dose * per_day
    needed = math.ceil(per_day_units * line.days / pack)
    lasts = math.floor(line.quantity * pack / per_day_units)
    return needed, lasts


def _mentions(allergen: str, drug: Drug) -> bool:
    allergen = allergen.strip().lower()
    if len(allergen) < 2:
        return False
    names = [drug.generic_name.lower(), drug.trade_name.lower()]
    return any(name and (allergen in name or name in allergen) for name in names)


def prescription_checks(
    *,
    profile: PatientProfile,
    lines: list[LineDraft],
    validity_days: int,
    chronic_reason: str,
    guardian: dict[str, Any] | None,
    specialist: dict[str, Any] | None,
    today: dt.date,
) -> list[Check]:
    checks: list[Check] = []

    def add(rule: str, outcome: str, message: str, line: int | None = None) -> None:
        checks.append(Check(rule, RULE_NAMES[rule], outcome, message, line))

    controlled = [(n, ln.drug) for n, ln in enumerate(lines, 1) if ln.drug.is_controlled]
    for n, drug in controlled:
        add(
            "controlled_drug_forbidden",
            "error",
            f"{drug.generic_name} is {drug.get_control_class_display()}: "
            "it cannot be prescribed online.",
            n,
        )
    if not controlled:
        add("controlled_drug_forbidden", "pass", "No specially controlled drug.")

    limit = settings.PRESCRIPTION_MAX_VALIDITY_DAYS
    if validity_days > limit:
        add("validity_too_long", "error", f"Validity is {validity_days} days; at most {limit}.")
    else:
        add("validity_too_long", "pass", f"Valid for {validity_days} day(s).")

    normal, chronic = settings.PRESCRIPTION_MAX_DAYS, settings.PRESCRIPTION_MAX_CHRONIC_DAYS
    supply_ok = True
    for n, line in enumerate(lines, 1):
        if line.days > chronic:
            add(
                "supply_too_long",
                "error",
                f"{line.days} days' supply is over the maximum of {chronic} days.",
                n,
            )
            supply_ok = False
        elif line.days > normal and not chronic_reason.strip():
            add(
                "supply_too_long",
                "error",
                f"{line.days} days' supply needs a chronic-disease reason (over {normal} days).",
                n,
            )
            supply_ok = False
    for n, line in enumerate(lines, 1):
        # The days a line states are its supply only if its quantity does not last longer
        # (a whole number of packs may: never more packs than those days need).
        supplied = _days_supplied(line)
        if supplied is not None and line.quantity > supplied[0]:
            needed, lasts = supplied
            add(
                "supply_too_long",
                "error",
                f"{line.quantity} {line.drug.unit} last about {lasts} days, more than the "
                f"{line.days} days of the line ({needed} {line.drug.unit} are enough): "
                "give the days the quantity lasts.",
                n,
            )
            supply_ok = False
    if supply_ok:
        add("supply_too_long", "pass", "Supply within the limits.")

    age = age_on(profile.birth_date, today)
    if age < settings.PRESCRIPTION_CHILD_AGE:
        missing = [
            who
            for who, value in (("guardian", guardian), ("specialist", specialist))
            if not (value and str(value.get("name", "")).strip())
        ]
        if missing:
            add(
                "guardian_required",
                "error",
                f"The patient is {age}: record the {' and the '.join(missing)} present.",
            )
        else:
            add("guardian_required", "pass", "Guardian and specialist recorded.")
    else:
        add("guardian_required", "pass", "Not a child under 6.")

    seen: dict[str, int] = {}
    duplicate = False
    for n, line in enumerate(lines, 1):
        key = line.drug.generic_name.strip().lower()
        if key in seen:
            duplicate = True
            add(
                "duplicate_drug",
                "warning",
                f"{line.drug.generic_name} is also on line {seen[key]}.",
                n,
            )
        else:
            seen[key] = n
    if not duplicate:
        add("duplicate_drug", "pass", "No drug appears twice.")

    conflict = False
    for n, line in enumerate(lines, 1):
        for allergen in profile.allergies or []:
            if _mentions(str(allergen), line.drug):
                conflict = True
                add(
                    "allergy_conflict",
                    "warning",
                    f"The patient is allergic to {allergen}: {line.drug.generic_name}.",
                    n,
                )
    if not conflict:
        add("allergy_conflict", "pass", "No known allergy conflicts.")
    return checks


def errors_of(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.outcome == "error"]


def raise_for(checks: list[Check]) -> None:
    """Raise the first blocking rule as its problem, with every check attached."""
    errors = errors_of(checks)
    if errors:
        first = errors[0]
        detail = "; ".join(c.message for c in errors if c.rule == first.rule)
        raise DomainError(first.rule, detail, extra={"checks": [c.as_dict() for c in checks]})
