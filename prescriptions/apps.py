from django.apps import AppConfig


class PrescriptionsConfig(AppConfig):
    name = "prescriptions"
    verbose_name = "Prescriptions"

    def ready(self) -> None:
        from payments.models import Order, OrderKind
        from payments.services import OrderKindHooks, order_kind_register
        from prescriptions import problems  # noqa: F401  (registers the error codes)
        from prescriptions.models import PrescriptionStatus
        from prescriptions.selectors import prescription_status

        #: After the pharmacist's approval and not cancelled or expired (DOMAIN rule 6).
        approved = frozenset(
            {
                PrescriptionStatus.ACTIVE,
                PrescriptionStatus.CLAIMED,
                PrescriptionStatus.DISPENSED,
                PrescriptionStatus.SHIPPED,
                PrescriptionStatus.DELIVERED,
            }
        )

        def approved_now(order: Order) -> bool:
            return prescription_status(prescription_id=order.subject_id) in approved

        order_kind_register(
            OrderKind.PRESCRIPTION,
            OrderKindHooks(on_paid=approved_now, payable=approved_now),
        )
