from django.apps import AppConfig


class PrescriptionsConfig(AppConfig):
    name = "prescriptions"
    verbose_name = "Prescriptions"

    def ready(self) -> None:
        from backend.api.problems import DomainError
        from payments.models import Order, OrderKind
        from payments.services import OrderKindHooks, order_kind_register
        from prescriptions import problems  # noqa: F401  (registers the error codes)
        from prescriptions.lifecycle import BEFORE_REVIEW
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

        def payable(order: Order) -> bool:
            status = prescription_status(prescription_id=order.subject_id)
            if status in BEFORE_REVIEW:  # the code for "payable before approval"
                raise DomainError(
                    "not_reviewed", "A prescription is paid for after a pharmacist approved it."
                )
            return status in approved

        order_kind_register(
            OrderKind.PRESCRIPTION,
            OrderKindHooks(on_paid=approved_now, payable=payable),
        )
