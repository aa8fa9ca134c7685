from django.apps import AppConfig


class ConsultationsConfig(AppConfig):
    name = "consultations"
    verbose_name = "Follow-up consultations"

    def ready(self) -> None:
        from consultations import problems  # noqa: F401 - registers the error codes
