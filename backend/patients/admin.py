from __future__ import annotations

from django.contrib import admin

from backend.patients.models import PatientProfile


@admin.register(PatientProfile)
class PatientProfileAdmin(admin.ModelAdmin[PatientProfile]):
    """ID and phone numbers are shown masked; they are searched by exact value through
    their blind indexes (see ``get_search_results``)."""

    list_display = ("real_name", "relation", "account", "id_type", "masked_id", "birth_date", "sex")
    list_filter = ("relation", "id_type", "sex")
    search_fields = ("real_name",)
    exclude = ("id_number_index", "phone_index")
    list_select_related = ("account",)

    @admin.display(description="ID number")
    def masked_id(self, obj: PatientProfile) -> str:
        value = obj.id_number or ""
        return (
            f"{value[:3]}{'*' * max(len(value) - 7, 0)}{value[-4:]}" if len(value) > 7 else "****"
        )

    def get_search_results(self, request, queryset, search_term):  # type: ignore[no-untyped-def]
        from backend.crypto.fields import blind_index_for

        results, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        if search_term:
            index = blind_index_for(PatientProfile, "id_number", search_term)
            results = results | queryset.filter(id_number_index=index)
        return results, may_have_duplicates
