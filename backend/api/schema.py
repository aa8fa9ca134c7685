"""OpenAPI generation tweaks."""

from __future__ import annotations

from drf_spectacular.openapi import AutoSchema as BaseAutoSchema


class AutoSchema(BaseAutoSchema):
    def get_operation_id(self) -> str:
        """Views mounted under both edges get the console's prefix on the console side, so
        every operation id stays unique and stable."""
        operation_id: str = super().get_operation_id()
        if self.path.startswith("/api/console/") and not operation_id.startswith("console_"):
            return f"console_{operation_id}"
        return operation_id
