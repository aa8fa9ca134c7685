"""Checking uploaded files by their content, not by what the client claims."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from django.core.files.uploadedfile import UploadedFile

from backend.api.problems import DomainError

#: content type -> the bytes such a file starts with
SIGNATURES: dict[str, tuple[bytes, ...]] = {
    "application/pdf": (b"%PDF-",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/png": (b"\x89PNG\r\n\x1a\n",),
}
DOCUMENT_TYPES = frozenset(SIGNATURES)
IMAGE_TYPES = frozenset({"image/jpeg", "image/png"})


@dataclass(frozen=True)
class InspectedUpload:
    content_type: str
    size: int
    sha256: str


def upload_inspect(
    *, upload: UploadedFile, allowed: frozenset[str], max_bytes: int
) -> InspectedUpload:
    """Identify the file by its first bytes, check it is allowed and not too large,
    and hash it. Raises ``unsupported_document_type`` or ``document_too_large``."""
    size = upload.size or 0
    if size > max_bytes:
        raise DomainError(
            "document_too_large", f"The file is {size} bytes; the limit is {max_bytes} bytes."
        )
    if size == 0:
        raise DomainError("unsupported_document_type", "The file is empty.")
    upload.seek(0)
    head = upload.read(16)
    upload.seek(0)
    content_type = next(
        (ct for ct, magics in SIGNATURES.items() if any(head.startswith(m) for m in magics)),
        None,
    )
    if content_type is None or content_type not in allowed:
        allowed_names = ", ".join(sorted(t.split("/")[1].upper() for t in allowed))
        raise DomainError("unsupported_document_type", f"Upload one of: {allowed_names}.")
    digest = hashlib.sha256()
    for chunk in upload.chunks():
        digest.update(chunk)
    upload.seek(0)
    return InspectedUpload(content_type=content_type, size=size, sha256=digest.hexdigest())
