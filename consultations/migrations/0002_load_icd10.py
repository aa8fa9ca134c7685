from django.db import migrations


def load(apps, schema_editor):  # type: ignore[no-untyped-def]
    from consultations.icd10 import icd10_load

    icd10_load(model=apps.get_model("consultations", "Icd10Code"))


def unload(apps, schema_editor):  # type: ignore[no-untyped-def]
    apps.get_model("consultations", "Icd10Code").objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [("consultations", "0001_initial")]
    operations = [migrations.RunPython(load, unload)]
