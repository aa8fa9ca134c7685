"""The append-only, hash-chained audit trail (DOMAIN rule 12).

Every state change and every access to medical data appends one ``AuditEvent`` through
``backend.audit.services.audit_record``. Each row stores the hash of the row before it,
so editing, deleting or reordering any row breaks the chain at that point;
``manage.py verify_audit_chain`` finds the first broken link. The database itself refuses
UPDATE and DELETE on the table (a trigger installed by the migration).
"""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _

GENESIS_HASH = "0" * 64


class AuditEvent(models.Model):
    seq = models.BigIntegerField(_("sequence"), primary_key=True)
    occurred_at = models.DateTimeField(_("time"), db_index=True)
    actor_id = models.CharField(_("actor id"), max_length=64, blank=True, db_index=True)
    actor_repr = models.CharField(_("actor"), max_length=200, blank=True)
    actor_role = models.CharField(_("role"), max_length=20, blank=True)
    action = models.CharField(_("action"), max_length=100, db_index=True)
    object_type = models.CharField(_("object type"), max_length=100, blank=True)
    object_id = models.CharField(_("object id"), max_length=64, blank=True)
    before = models.JSONField(_("before"), null=True, blank=True)
    after = models.JSONField(_("after"), null=True, blank=True)
    ip = models.GenericIPAddressField(_("IP address"), null=True, blank=True)
    user_agent = models.CharField(_("user agent"), max_length=300, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        verbose_name = _("audit event")
        ordering = ["seq"]
        indexes = [models.Index(fields=["object_type", "object_id", "seq"])]

    def __str__(self) -> str:
        return f"#{self.seq} {self.action} {self.object_type}:{self.object_id}"


class AuditChainHead(models.Model):
    """One row per chain: the last sequence number and hash. Appends lock it, which
    serialises writers so that the chain has exactly one order."""

    name = models.CharField(max_length=32, primary_key=True)
    last_seq = models.BigIntegerField(default=0)
    last_hash = models.CharField(max_length=64, default=GENESIS_HASH)
