"""How consultations, records and messages look on the wire (HTTP and WebSocket)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from consultations.models import Consultation, ConsultationMode, PriorDiagnosis


def _doctor(practitioner: Any) -> dict[str, Any] | None:
    if practitioner is None:
        return None
    return {
        "id": str(practitioner.pk),
        "name": practitioner.user.display_name,
        "title": practitioner.title,
    }


def consultation_state(consultation: Consultation) -> dict[str, Any]:
    """The consultation as the participants see it (``sync`` frame and HTTP detail)."""
    profile = consultation.profile
    return {
        "id": str(consultation.pk),
        "status": consultation.status,
        "status_reason": consultation.status_reason,
        "mode": consultation.mode,
        "patient": {
            "profile": str(profile.pk),
            "name": profile.real_name,
            "sex": profile.sex,
            "birth_date": profile.birth_date.isoformat(),
            "relation": profile.relation,
        },
        "hospital": str(consultation.hospital_id),
        "department": {"id": str(consultation.department_id), "name": consultation.department.name},
        "requested_doctor": _doctor(consultation.requested_doctor),
        "doctor": _doctor(consultation.doctor),
        "prior_diagnosis": str(consultation.prior_diagnosis_id),
        "complaint": consultation.complaint,
        "diagnoses": consultation.diagnoses,
        "note": consultation.note,
        "fee": consultation.fee,
        "requested_at": consultation.requested_at.isoformat(),
        "expires_at": consultation.expires_at.isoformat(),
        "accepted_at": consultation.accepted_at.isoformat() if consultation.accepted_at else None,
        "closed_at": consultation.closed_at.isoformat() if consultation.closed_at else None,
        "last_seq": consultation.last_seq,
    }


class ConsultationStateSerializer(serializers.BaseSerializer):  # type: ignore[type-arg]
    """List views render each row with ``consultation_state``."""

    def to_representation(self, instance: Consultation) -> dict[str, Any]:
        return consultation_state(instance)


class PersonRefOutput(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.UUIDField()
    name = serializers.CharField()
    title = serializers.CharField()


class ConsultationOutput(serializers.Serializer):  # type: ignore[type-arg]
    """Documents the shape of ``consultation_state`` for the OpenAPI schema."""

    id = serializers.UUIDField()
    status = serializers.ChoiceField(
        choices=[c[0] for c in Consultation._meta.get_field("status").choices or []]
    )
    status_reason = serializers.CharField(allow_blank=True)
    mode = serializers.ChoiceField(choices=ConsultationMode.values)
    patient = serializers.DictField()
    hospital = serializers.UUIDField()
    department = serializers.DictField()
    requested_doctor = PersonRefOutput(allow_null=True)
    doctor = PersonRefOutput(allow_null=True)
    prior_diagnosis = serializers.UUIDField()
    complaint = serializers.CharField(allow_blank=True)
    diagnoses = serializers.ListField(child=serializers.DictField())
    note = serializers.DictField()
    fee = serializers.IntegerField(help_text="fen")
    requested_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()
    accepted_at = serializers.DateTimeField(allow_null=True)
    closed_at = serializers.DateTimeField(allow_null=True)
    last_seq = serializers.IntegerField()


class AttachmentOutput(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.UUIDField()
    filename = serializers.CharField()
    content_type = serializers.CharField()
    size = serializers.IntegerField()


class MessageOutput(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.UUIDField()
    seq = serializers.IntegerField()
    sender = serializers.UUIDField(allow_null=True)
    kind = serializers.CharField()
    text = serializers.CharField(allow_blank=True)
    attachment = AttachmentOutput(allow_null=True)
    created_at = serializers.DateTimeField()


class PriorDiagnosisOutput(serializers.ModelSerializer):  # type: ignore[type-arg]
    has_document = serializers.SerializerMethodField()

    class Meta:
        model = PriorDiagnosis
        fields = [
            "id",
            "profile",
            "institution",
            "diagnosed_on",
            "icd10_code",
            "icd10_name",
            "diagnosis_text",
            "has_document",
            "document_content_type",
            "created_at",
        ]

    def get_has_document(self, obj: PriorDiagnosis) -> bool:
        return bool(obj.document)


class PriorDiagnosisInput(serializers.Serializer):  # type: ignore[type-arg]
    profile = serializers.UUIDField()
    institution = serializers.CharField(max_length=200)
    diagnosed_on = serializers.DateField()
    icd10_code = serializers.CharField(max_length=16)
    diagnosis_text = serializers.CharField(max_length=2000, required=False, allow_blank=True)
    document = serializers.FileField(required=False, allow_null=True)


class ConsultationRequestInput(serializers.Serializer):  # type: ignore[type-arg]
    profile = serializers.UUIDField()
    department = serializers.UUIDField()
    doctor = serializers.UUIDField(
        required=False, allow_null=True, help_text="A doctor of the department; omit for its queue"
    )
    prior_diagnosis = serializers.UUIDField(
        required=False, allow_null=True, help_text="Defaults to the latest record"
    )
    complaint = serializers.CharField(max_length=2000, required=False, allow_blank=True)
    mode = serializers.ChoiceField(choices=ConsultationMode.values, default=ConsultationMode.TEXT)


class ReasonInput(serializers.Serializer):  # type: ignore[type-arg]
    reason = serializers.CharField(max_length=1000)


class OptionalReasonInput(serializers.Serializer):  # type: ignore[type-arg]
    reason = serializers.CharField(max_length=1000, required=False, allow_blank=True)


class AcceptInput(serializers.Serializer):  # type: ignore[type-arg]
    follow_up_confirmed = serializers.BooleanField()


class DiagnosisInput(serializers.Serializer):  # type: ignore[type-arg]
    icd10 = serializers.CharField(max_length=16)
    name = serializers.CharField(max_length=300, required=False, allow_blank=True)
    main = serializers.BooleanField(default=False)


class NoteInput(serializers.Serializer):  # type: ignore[type-arg]
    chief_complaint = serializers.CharField(max_length=2000)
    history = serializers.CharField(max_length=5000, allow_blank=True)
    findings = serializers.CharField(max_length=5000, allow_blank=True)
    advice = serializers.CharField(max_length=5000)


class EndInput(serializers.Serializer):  # type: ignore[type-arg]
    diagnoses = DiagnosisInput(many=True)
    note = NoteInput()
    fee = serializers.IntegerField(min_value=0, help_text="fen")
