from django.apps import AppConfig


class RegulatorsConfig(AppConfig):
    name = "regulators"
    verbose_name = "Regulator reporting"

    def ready(self) -> None:
        from regulators import problems  # noqa: F401  (registers the error codes)
