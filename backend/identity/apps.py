from django.apps import AppConfig


class IdentityConfig(AppConfig):
    name = "backend.identity"
    label = "identity"
    verbose_name = "Identity and credentials"

    def ready(self) -> None:
        from backend.identity import schema  # noqa: F401 - registers the OpenAPI extensions
