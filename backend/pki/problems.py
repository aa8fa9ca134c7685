"""The error codes of keys, certificates and signing (registered with the catalogue)."""

from backend.api.problems import register_problem

for _code, _status, _title in (
    (
        "signature_required",
        403,
        "This needs the signer's own signing act (their second factor, in their session)",
    ),
    ("no_signing_certificate", 409, "The signer has no valid signing certificate"),
    ("certificate_revoked", 409, "The signing certificate is revoked"),
    ("signature_invalid", 422, "The signature or its certificate chain does not verify"),
):
    register_problem(_code, _status, _title)
