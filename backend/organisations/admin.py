from __future__ import annotations

from django.contrib import admin

from backend.organisations.models import (
    Department,
    Hospital,
    HospitalAdministrator,
    Pharmacy,
    PharmacyStaff,
    Practitioner,
    Province,
    RegulatorOfficial,
)


@admin.register(Province)
class ProvinceAdmin(admin.ModelAdmin[Province]):
    list_display = ("code", "name", "regulator_name")
    search_fields = ("code", "name")


class DepartmentInline(admin.TabularInline[Department, Hospital]):
    model = Department
    extra = 0


@admin.register(Hospital)
class HospitalAdmin(admin.ModelAdmin[Hospital]):
    list_display = (
        "name",
        "province",
        "unified_social_credit_code",
        "practice_licence_number",
        "practice_licence_valid_until",
        "internet_hospital_licence_valid_until",
    )
    list_filter = ("province",)
    search_fields = ("name", "unified_social_credit_code", "practice_licence_number")
    inlines = [DepartmentInline]


@admin.register(Department)
class DepartmentAdmin(admin.ModelAdmin[Department]):
    list_display = ("code", "name", "hospital", "is_active")
    list_filter = ("hospital", "is_active")
    search_fields = ("code", "name")


@admin.register(Practitioner)
class PractitionerAdmin(admin.ModelAdmin[Practitioner]):
    list_display = (
        "user",
        "kind",
        "hospital",
        "department",
        "title",
        "filing_status",
        "licence_valid_until",
        "last_identity_check_at",
        "on_duty",
    )
    list_filter = ("kind", "filing_status", "hospital", "on_duty")
    search_fields = ("user__username", "user__display_name", "practice_certificate_number")
    autocomplete_fields = ("user",)
    list_select_related = ("user", "hospital", "department")


class PharmacyStaffInline(admin.TabularInline[PharmacyStaff, Pharmacy]):
    model = PharmacyStaff
    extra = 0
    autocomplete_fields = ("user",)


@admin.register(Pharmacy)
class PharmacyAdmin(admin.ModelAdmin[Pharmacy]):
    list_display = ("code", "name", "province", "is_active")
    list_filter = ("province", "is_active")
    search_fields = ("code", "name")
    inlines = [PharmacyStaffInline]


@admin.register(RegulatorOfficial)
class RegulatorOfficialAdmin(admin.ModelAdmin[RegulatorOfficial]):
    list_display = ("user", "province")
    list_filter = ("province",)
    autocomplete_fields = ("user",)


@admin.register(HospitalAdministrator)
class HospitalAdministratorAdmin(admin.ModelAdmin[HospitalAdministrator]):
    list_display = ("user", "hospital")
    list_filter = ("hospital",)
    autocomplete_fields = ("user",)
