from django.apps import AppConfig


class PkiConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "backend.pki"
    label = "pki"
    verbose_name = "Keys and certificates"

    def ready(self) -> None:
        from backend.pki import problems  # noqa: F401  (registers the error codes)
