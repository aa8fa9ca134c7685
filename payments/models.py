"""Orders, payment attempts, insurance settlements, refunds and the ledger (issue 8).

An order is one payable thing: a consultation's fee or a prescription's drugs and
delivery. Its status changes only in ``payments.services`` through the table in
``payments.lifecycle``; every change writes an ``OrderEvent``. Money is in fen.

Money movements are ``LedgerEntry`` rows, signed (a charge is positive, a refund or a
reversal negative) and unique per external reference, so a repeated notification can
never book the same movement twice: for a paid order the entries add up to its total,
split into the gateway's self-pay and the insurance fund and personal account.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from backend.crypto.fields import EncryptedTextField
from backend.organisations.models import Hospital
from backend.patients.models import PatientProfile


class Channel(models.TextChoices):
    WECHAT = "wechat", _("WeChat Pay")
    ALIPAY = "alipay", _("Alipay")
    INSURANCE = "insurance", _("Medical insurance (with self-pay through a gateway)")


#: The channels that are mobile-payment gateways (the insurance channel is not).
GATEWAYS = (Channel.WECHAT, Channel.ALIPAY)


class GatewayConnection(models.Model):
    """A hospital's merchant account at one mobile-payment gateway, from onboarding."""

    hospital = models.ForeignKey(Hospital, on_delete=models.PROTECT, related_name="+")
    channel = models.CharField(max_length=10, choices=[(c.value, c.label) for c in GATEWAYS])
    base_url = models.URLField(_("gateway base URL"))
    mchid = models.CharField(_("merchant id"), max_length=32)
    appid = models.CharField(_("app id"), max_length=64)
    signing_secret = EncryptedTextField(_("request signing secret"))
    api_v3_key = EncryptedTextField(_("API v3 key (AES-256-GCM, 32 characters)"))
    gateway_public_key_pem = models.TextField(
        _("gateway public key (PEM)"), help_text=_("Pinned at onboarding; never fetched")
    )
    notify_base_url = models.URLField(
        _("our public base URL"),
        help_text=_("Where the gateway reaches /api/payments/v1/notify/{channel}"),
    )
    timeout_seconds = models.FloatField(default=5.0)
    enabled = models.BooleanField(default=True)

    class Meta:
        verbose_name = _("gateway connection")
        constraints = [
            models.UniqueConstraint(fields=["hospital", "channel"], name="one_gateway_per_channel")
        ]

    def __str__(self) -> str:
        return f"{self.hospital} · {self.channel} {self.mchid}"


class InsuranceConnection(models.Model):
    """A hospital's connection to the medical-insurance platform (outpatient settlement)."""

    hospital = models.OneToOneField(Hospital, on_delete=models.PROTECT, related_name="+")
    base_url = models.URLField(_("insurance platform base URL"))
    paasid = models.CharField(_("platform id (x-tif-paasid)"), max_length=64)
    secret = EncryptedTextField(_("secret"))
    fixmedins_code = models.CharField(_("designated institution code"), max_length=30)
    #: The gateway that takes the self-pay part of an insured order.
    self_pay_channel = models.CharField(
        max_length=10, choices=[(c.value, c.label) for c in GATEWAYS], default=Channel.WECHAT
    )
    timeout_seconds = models.FloatField(default=10.0)
    enabled = models.BooleanField(default=True)

    class Meta:
        verbose_name = _("insurance connection")

    def __str__(self) -> str:
        return f"{self.hospital} · {self.paasid}"


class OrderKind(models.TextChoices):
    CONSULTATION_FEE = "consultation_fee", _("Consultation fee")
    PRESCRIPTION = "prescription", _("Prescription drugs and delivery")


class OrderStatus(models.TextChoices):
    UNPAID = "unpaid", _("Unpaid")
    PAID = "paid", _("Paid")
    REFUNDING = "refunding", _("Refunding")
    REFUNDED = "refunded", _("Refunded")
    CLOSED = "closed", _("Closed")


class Order(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=20, choices=OrderKind.choices)
    #: The consultation or prescription this order pays for.
    subject_id = models.UUIDField()
    hospital = models.ForeignKey(Hospital, on_delete=models.PROTECT, related_name="+")
    profile = models.ForeignKey(PatientProfile, on_delete=models.PROTECT, related_name="orders")
    account = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="orders"
    )
    description = models.CharField(max_length=120)
    status = models.CharField(
        max_length=12, choices=OrderStatus.choices, default=OrderStatus.UNPAID, db_index=True
    )
    #: ``[{"code", "name", "unit_price", "quantity", "amount"}]``; the amounts add up to total.
    items = models.JSONField(default=list)
    total = models.PositiveIntegerField(_("total (fen)"))
    channel = models.CharField(max_length=10, choices=Channel.choices, blank=True)
    insurance_fund = models.PositiveIntegerField(null=True, blank=True)
    insurance_account = models.PositiveIntegerField(null=True, blank=True)
    self_pay = models.PositiveIntegerField(null=True, blank=True)
    refunded = models.PositiveIntegerField(_("refunded (fen)"), default=0)
    paid_at = models.DateTimeField(null=True, blank=True)
    #: When the consultation or prescription heard that it is paid (the sweep retries).
    subject_told_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = _("order")
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["kind", "subject_id"], name="one_order_per_subject"),
            models.CheckConstraint(condition=Q(total__gt=0), name="order_total_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.total} fen ({self.status})"


class OrderEvent(models.Model):
    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="events")
    action = models.CharField(max_length=30)
    from_status = models.CharField(max_length=12, blank=True)
    to_status = models.CharField(max_length=12)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    reason = models.CharField(max_length=200, blank=True)
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        verbose_name = _("order event")
        ordering = ["id"]


class AttemptStatus(models.TextChoices):
    CREATED = "created", _("Created")
    PAID = "paid", _("Paid")
    CLOSED = "closed", _("Closed")


class PaymentAttempt(models.Model):
    """One prepay order at a gateway; ``out_trade_no`` is ours and unique."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="attempts")
    channel = models.CharField(max_length=10, choices=Channel.choices)
    out_trade_no = models.CharField(max_length=32, unique=True)
    amount = models.PositiveIntegerField()
    status = models.CharField(
        max_length=10, choices=AttemptStatus.choices, default=AttemptStatus.CREATED
    )
    prepay_id = models.CharField(max_length=64, blank=True)
    pay_url = models.URLField(max_length=500, blank=True)
    transaction_id = models.CharField(max_length=64, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        verbose_name = _("payment attempt")
        ordering = ["created_at"]


class SettlementStatus(models.TextChoices):
    SETTLED = "settled", _("Settled")
    REVERSED = "reversed", _("Reversed")


class InsuranceSettlement(models.Model):
    """The insurance platform's split of an order (2207), and its reversal (2208)."""

    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="settlements")
    ipt_otp_no = models.CharField(max_length=40, unique=True)
    setl_id = models.CharField(max_length=64)
    mdtrt_id = models.CharField(max_length=64)
    psn_no = models.CharField(max_length=64)
    medfee_sumamt = models.PositiveIntegerField()
    fund_pay_sumamt = models.PositiveIntegerField()
    acct_pay = models.PositiveIntegerField()
    psn_cash_pay = models.PositiveIntegerField()
    status = models.CharField(
        max_length=10, choices=SettlementStatus.choices, default=SettlementStatus.SETTLED
    )
    reversal_setl_id = models.CharField(max_length=64, blank=True)
    settled_at = models.DateTimeField()
    reversed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = _("insurance settlement")


class RefundReason(models.TextChoices):
    CONSULTATION_EXPIRED = "consultation_expired", _("Consultation expired unanswered")
    CONSULTATION_CANCELLED = "consultation_cancelled", _("Consultation cancelled")
    FIRST_VISIT_REFUSED = "first_visit_refused", _("Refused as a first visit")
    REFERRED_OFFLINE = "referred_offline", _("Referred offline")
    FEE_REDUCED = "fee_reduced", _("Fee lowered by the doctor at the end")
    PRESCRIPTION_CANCELLED = "prescription_cancelled", _("Prescription cancelled")
    PRESCRIPTION_EXPIRED = "prescription_expired", _("Prescription expired")
    PAID_AFTER_CLOSE = "paid_after_close", _("Paid after the order was closed")
    DUPLICATE_PAYMENT = "duplicate_payment", _("Paid twice (another attempt)")


class RefundStatus(models.TextChoices):
    REQUESTED = "requested", _("Requested")
    PROCESSING = "processing", _("Processing at the gateway")
    SUCCEEDED = "succeeded", _("Succeeded")
    FAILED = "failed", _("Failed (retried)")


class Refund(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="refunds")
    reason = models.CharField(max_length=30, choices=RefundReason.choices)
    #: The gateway payment the money goes back through (None: only insurance is reversed).
    attempt = models.ForeignKey(
        PaymentAttempt, on_delete=models.PROTECT, null=True, blank=True, related_name="refunds"
    )
    #: What goes back to the patient's wallet (the gateway part).
    amount = models.PositiveIntegerField()
    #: Whether the insurance settlement is reversed with it (a full refund).
    reverse_insurance = models.BooleanField(default=False)
    #: Derived from (order, reason, attempt): a repeated trigger finds the same refund.
    out_refund_no = models.CharField(max_length=40, unique=True)
    status = models.CharField(
        max_length=12, choices=RefundStatus.choices, default=RefundStatus.REQUESTED
    )
    refund_id = models.CharField(max_length=64, blank=True)
    last_error = models.CharField(max_length=300, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    succeeded_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = _("refund")
        ordering = ["created_at"]


class EntryKind(models.TextChoices):
    GATEWAY_CHARGE = "gateway_charge", _("Self-pay through a gateway")
    INSURANCE_FUND = "insurance_fund", _("Insurance fund payment")
    INSURANCE_ACCOUNT = "insurance_account", _("Personal insurance account payment")
    GATEWAY_REFUND = "gateway_refund", _("Refund through a gateway")
    INSURANCE_FUND_REVERSAL = "insurance_fund_reversal", _("Insurance fund reversed")
    INSURANCE_ACCOUNT_REVERSAL = "insurance_account_reversal", _("Personal account reversed")


class LedgerEntry(models.Model):
    """One money movement. ``reference`` is the external id (transaction, refund,
    settlement): with ``kind`` it is unique, so nothing is booked twice."""

    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="ledger")
    kind = models.CharField(max_length=30, choices=EntryKind.choices)
    channel = models.CharField(max_length=10, choices=Channel.choices)
    amount = models.IntegerField(_("amount (fen, signed)"))
    reference = models.CharField(max_length=64)
    #: Our number the channel's bill names (out_trade_no or out_refund_no).
    our_reference = models.CharField(max_length=40, db_index=True)
    occurred_at = models.DateTimeField(db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = _("ledger entry")
        verbose_name_plural = _("ledger")
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["kind", "reference"], name="ledger_booked_once")
        ]


class NotificationLog(models.Model):
    """Every notification the gateways posted, and what we did with it."""

    channel = models.CharField(max_length=10)
    notification_id = models.CharField(max_length=64, blank=True)
    event_type = models.CharField(max_length=40, blank=True)
    outcome = models.CharField(max_length=40)
    detail = models.CharField(max_length=300, blank=True)
    received_at = models.DateTimeField(db_index=True)

    class Meta:
        verbose_name = _("payment notification")
        ordering = ["-received_at"]


class Reconciliation(models.Model):
    """One run of ``reconcile_payments`` for a day and a gateway."""

    hospital = models.ForeignKey(Hospital, on_delete=models.PROTECT, related_name="+")
    channel = models.CharField(max_length=10, choices=Channel.choices)
    bill_date = models.DateField()
    ran_at = models.DateTimeField()
    bill_rows = models.PositiveIntegerField()
    ledger_rows = models.PositiveIntegerField()
    #: ``[{"kind": "missing_here"|"missing_there"|"amount_differs", "type", "our_reference",
    #: "order", "bill_amount", "ledger_amount"}]``
    differences = models.JSONField(default=list)

    class Meta:
        verbose_name = _("reconciliation")
        ordering = ["-ran_at"]

    @property
    def is_clean(self) -> bool:
        return not self.differences
