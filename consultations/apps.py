from django.apps import AppConfig


class ConsultationsConfig(AppConfig):
    name = "consultations"
    verbose_name = "Follow-up consultations"

    def ready(self) -> None:
        from consultations import problems  # noqa: F401 - registers the error codes
        from consultations.lifecycle import CLOSED
        from consultations.models import Consultation, ConsultationStatus
        from consultations.services import consultation_paid
        from payments.models import Order, OrderKind
        from payments.services import OrderKindHooks, order_kind_register

        def payable(order: Order) -> bool:
            status = (
                Consultation.objects.filter(pk=order.subject_id)
                .values_list("status", flat=True)
                .first()
            )
            return status is not None and (
                status not in CLOSED or status == ConsultationStatus.ENDED
            )

        order_kind_register(
            OrderKind.CONSULTATION_FEE,
            OrderKindHooks(
                on_paid=lambda order: consultation_paid(consultation_id=order.subject_id),
                payable=payable,
            ),
        )
