"""The drug catalogue: CSV import with an error report per row."""

from __future__ import annotations

from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from prescriptions.catalogue import COLUMNS, OPTIONAL_COLUMNS, drug_catalogue_import
from prescriptions.models import ControlClass, Drug

pytestmark = pytest.mark.django_db

HEADER = ",".join(COLUMNS)
GOOD = "DEMO-1,hospital,盐酸二甲双胍片,格华止,0.5g*20片,片剂,盒,口服,rx,none,1890"
NHSA = "XA10BAE054A001010100001,nhsa,盐酸二甲双胍片,,0.5g*20片,片剂,盒,口服,rx,none,1890"


def csv_text(*rows: str) -> str:
    return "\n".join([HEADER, *rows]) + "\n"


def test_a_valid_file_creates_drugs_with_every_field():
    report = drug_catalogue_import(text=csv_text(GOOD, NHSA))
    assert report.ok
    assert (report.created, report.updated) == (2, 0)
    drug = Drug.objects.get(code="DEMO-1")
    assert (drug.generic_name, drug.trade_name, drug.specification, drug.unit_price) == (
        "盐酸二甲双胍片",
        "格华止",
        "0.5g*20片",
        1890,
    )
    assert not drug.is_controlled
    assert Drug.objects.get(code="XA10BAE054A001010100001").code_system == "nhsa"


def test_reimporting_updates_by_code():
    drug_catalogue_import(text=csv_text(GOOD))
    report = drug_catalogue_import(text=csv_text(GOOD.replace(",1890", ",1990")))
    assert (report.created, report.updated) == (0, 1)
    assert Drug.objects.get(code="DEMO-1").unit_price == 1990
    assert Drug.objects.count() == 1


def test_every_bad_row_is_reported_with_its_line_and_nothing_is_imported():
    text = csv_text(
        GOOD,
        "SHORT,nhsa,药,,1片,片剂,盒,口服,rx,none,100",  # line 3
        "DEMO-2,hospital,,,1片,片剂,盒,口服,rx,none,100",  # line 4
        "DEMO-3,hospital,药,,1片,片剂,盒,口服,otc_a,narcotic,100",  # line 5
        "DEMO-4,hospital,药,,1片,片剂,盒,口服,rx,none,12.5",  # line 6
        "DEMO-5,hospital,药,,1片,片剂,盒,口服,rx,sedative,100",  # line 7
        GOOD,  # line 8
    )
    report = drug_catalogue_import(text=text)
    assert report.errors == [
        "line 3: an NHSA code is 23 capital letters and digits",
        "line 4: generic_name is required",
        "line 5: a controlled drug cannot be OTC",
        "line 6: unit_price_fen must be a whole number of fen (0 or more)",
        "line 7: control_class 'sedative' is not one of none, narcotic, psychotropic_1, "
        "psychotropic_2, toxic, radioactive, precursor",
        "line 8: code DEMO-1 repeats line 2",
    ]
    assert Drug.objects.count() == 0


def test_partial_import_keeps_the_valid_rows():
    report = drug_catalogue_import(
        text=csv_text(GOOD, "DEMO-2,hospital,,,1片,片剂,盒,口服,rx,none,100"), partial=True
    )
    assert report.created == 1
    assert report.errors == ["line 3: generic_name is required"]
    assert list(Drug.objects.values_list("code", flat=True)) == ["DEMO-1"]


def test_a_file_without_the_columns_is_refused():
    report = drug_catalogue_import(text="code,name\nX,Y\n")
    assert report.errors[0].startswith("line 1: missing columns: code_system")
    assert Drug.objects.count() == 0


def test_the_command_exits_non_zero_and_names_the_rows(tmp_path: Path):
    path = tmp_path / "drugs.csv"
    path.write_text(csv_text(GOOD, "DEMO-2,hospital,,,1片,片剂,盒,口服,rx,none,100"))
    err = StringIO()
    with pytest.raises(CommandError, match="nothing was imported"):
        call_command("import_drugs", str(path), stdout=StringIO(), stderr=err)
    assert "line 3: generic_name is required" in err.getvalue()
    assert Drug.objects.count() == 0


@pytest.mark.usefixtures("icd10")
def test_the_demo_catalogue_has_chronic_drugs_and_every_controlled_class():
    call_command("seed_demo", stdout=StringIO())
    classes = set(Drug.objects.values_list("control_class", flat=True))
    assert classes == set(ControlClass.values)
    assert Drug.objects.filter(control_class=ControlClass.NONE).count() >= 15


PACK_HEADER = ",".join((*COLUMNS, *OPTIONAL_COLUMNS))


def test_the_pack_columns_say_what_a_pack_holds_and_are_checked_per_row():
    text = "\n".join(
        [
            PACK_HEADER,
            GOOD + ",20,0.5,g",  # line 2
            "DEMO-2,hospital,舒利迭,,60吸,吸入粉雾剂,支,吸入,rx,none,18800,60,,",  # line 3
            "DEMO-3,hospital,药,,1片,片剂,盒,口服,rx,none,100,0,5,mg",  # line 4
            "DEMO-4,hospital,药,,1片,片剂,盒,口服,rx,none,100,7,-5,mg",  # line 5
            "DEMO-5,hospital,药,,1片,片剂,盒,口服,rx,none,100,7,5,",  # line 6
            "DEMO-6,hospital,药,,1片,片剂,盒,口服,rx,none,100,7,0.00001,mg",  # line 7
            "DEMO-7,hospital,药,,1片,片剂,盒,口服,rx,none,100,7,1e12,mg",  # line 8
            "DEMO-8,hospital,药,,1片,片剂,盒,口服,rx,none,100,9999999999,5,mg",  # line 9
        ]
    )
    report = drug_catalogue_import(text=text + "\n")
    assert report.errors == [
        "line 4: pack_size must be a whole number from 1 to 100000",
        "line 5: unit_strength must be above 0 and below 100000000, with at most 4 decimals",
        "line 6: unit_strength and strength_unit go together",
        "line 7: unit_strength must be above 0 and below 100000000, with at most 4 decimals",
        "line 8: unit_strength must be above 0 and below 100000000, with at most 4 decimals",
        "line 9: pack_size must be a whole number from 1 to 100000",
    ]
    report = drug_catalogue_import(text=text + "\n", partial=True)
    assert (report.created, report.updated) == (2, 0)
    metformin = Drug.objects.get(code="DEMO-1")
    assert (metformin.pack_size, metformin.unit_strength, metformin.strength_unit) == (
        20,
        Decimal("0.5"),
        "g",
    )
    inhaler = Drug.objects.get(code="DEMO-2")
    assert (inhaler.pack_size, inhaler.unit_strength, inhaler.strength_unit) == (60, None, "")

    # A file without the pack columns leaves what the catalogue holds; one with only some
    # of them is refused.
    report = drug_catalogue_import(text=csv_text(GOOD.replace(",1890", ",1990")))
    assert (report.created, report.updated) == (0, 1)
    metformin.refresh_from_db()
    assert (metformin.unit_price, metformin.pack_size, metformin.unit_strength) == (
        1990,
        20,
        Decimal("0.5"),
    )
    partial_header = "\n".join([",".join((*COLUMNS, "pack_size")), GOOD + ",20"]) + "\n"
    assert drug_catalogue_import(text=partial_header).errors == [
        "line 1: the columns pack_size, unit_strength, strength_unit go together"
    ]
