from django.apps import AppConfig


class PrescriptionsConfig(AppConfig):
    name = "prescriptions"
    verbose_name = "Prescriptions"

    def ready(self) -> None:
        from payments.models import OrderKind
        from payments.services import OrderKindHooks, order_kind_register
        from prescriptions import problems  # noqa: F401  (registers the error codes)
        from prescriptions.billing import order_paid, order_payable

        order_kind_register(
            OrderKind.PRESCRIPTION, OrderKindHooks(on_paid=order_paid, payable=order_payable)
        )
