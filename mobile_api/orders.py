"""Patients' orders: list, detail with refunds, and pay (CONTRACT section 8)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from backend.api.pagination import CursorPage
from backend.api.problems import DomainError
from backend.api.views import ApiView, ListApiView
from backend.audit.services import RequestMeta
from backend.identity.authentication import request_account
from mobile_api.permissions import IsPatient
from payments.models import Order
from payments.serializers import (
    OrderOutput,
    OrderStateSerializer,
    PayInput,
    PayOutput,
    order_state,
)
from payments.services import order_pay


class Newest(CursorPage):
    ordering = ("-created_at", "id")


def _order_of(request: Request, order_id: UUID) -> Order:
    order = (
        Order.objects.prefetch_related("refunds")
        .filter(pk=order_id, account=request_account(request))
        .first()
    )
    if order is None:
        raise DomainError("not_found", "No such order.")
    return order


class OrdersApi(ListApiView):
    permission_classes = [IsPatient]
    serializer_class = OrderStateSerializer
    pagination_class = Newest

    def get_queryset(self) -> QuerySet[Order]:
        qs = Order.objects.filter(account=request_account(self.request)).prefetch_related("refunds")
        for name in ("status", "kind"):
            value = self.request.query_params.get(name)
            if value:
                qs = qs.filter(**{name: value})
        return qs

    @extend_schema(
        operation_id="orders_list",
        parameters=[OpenApiParameter("status", str), OpenApiParameter("kind", str)],
        responses={200: OrderOutput(many=True)},
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class OrderApi(ApiView):
    permission_classes = [IsPatient]

    @extend_schema(operation_id="orders_retrieve", responses={200: OrderOutput})
    def get(self, request: Request, order_id: UUID) -> Response:
        return Response(order_state(_order_of(request, order_id)))


class OrderPayApi(ApiView):
    permission_classes = [IsPatient]

    @extend_schema(
        operation_id="orders_pay",
        request=PayInput,
        responses={200: PayOutput},
        description=(
            "Start paying. `wechat`/`alipay`: the whole total through that gateway. "
            "`insurance`: the insurance platform settles first and splits the total; the "
            "self-pay part then goes through the hospital's self-pay gateway (nothing, "
            "when insurance covers it all: `paid` is true). 409 `order_not_payable` "
            "unless the order is unpaid."
        ),
    )
    def post(self, request: Request, order_id: UUID) -> Response:
        data = PayInput(data=request.data)
        data.is_valid(raise_exception=True)
        account = request_account(request)
        _order_of(request, order_id)
        pay = order_pay(
            order_id=order_id,
            account=account,
            channel=data.validated_data["channel"],
            meta=RequestMeta.from_request(request),
        )
        settlement = pay.settlement
        return Response(
            {
                "order": order_state(_order_of(request, order_id)),
                "channel": pay.channel,
                "paid": pay.paid,
                "gateway": pay.gateway,
                "amount": pay.amount,
                "out_trade_no": pay.out_trade_no,
                "prepay_id": pay.prepay_id,
                "pay_url": pay.pay_url,
                "insurance": None
                if settlement is None
                else {
                    "setl_id": settlement.setl_id,
                    "medfee_sumamt": settlement.medfee_sumamt,
                    "fund_pay_sumamt": settlement.fund_pay_sumamt,
                    "acct_pay": settlement.acct_pay,
                    "psn_cash_pay": settlement.psn_cash_pay,
                },
            }
        )
