"""Signed C2PA manifests (c2pa-python) in the PNGs the history writes, with a certificate and key the operator supplies,
and reading one back for the PNG info tab.

The manifest says what the XMP packet says (storage/xmp.py), signed: a `c2pa.created` action whose digitalSourceType is
IPTC's trainedAlgorithmicMedia, made by this app. Signing is optional (a host needs a certificate from a CA that C2PA
validators trust for the signature to show as trusted); the XMP disclosure is always written.

Nothing here touches the network: no timestamp authority unless one is named, and reading never fetches a remote
manifest or OCSP answer (an uploaded PNG must not make the server send requests).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from .errors import StorageError
from .xmp import TRAINED_ALGORITHMIC_MEDIA

# Verification settings for reading: offline, whatever the file asks for.
OFFLINE = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}


class C2paSetupError(ValueError):
    """The certificate or key cannot sign (unreadable, mismatched, or refused by the C2PA library); one sentence."""


def _algorithm(private_key_pem: bytes) -> str:
    """The C2PA signing algorithm of a PEM private key: es256/es384/es512 for EC keys by curve, ps256 for RSA,
    ed25519."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError) as error:
        raise C2paSetupError(f"The C2PA private key is not an unencrypted PEM key ({error}).") from None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        by_curve = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
        if key.curve.name not in by_curve:
            raise C2paSetupError(f"The C2PA private key's curve {key.curve.name} is not one C2PA signs with.")
        return by_curve[key.curve.name]
    if isinstance(key, rsa.RSAPrivateKey):
        return "ps256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    raise C2paSetupError(f"The C2PA private key is a {type(key).__name__}; C2PA signs with EC, RSA or Ed25519 keys.")


class C2paSigner:
    """Adds a signed C2PA manifest to PNG bytes. Built from PEM files with `from_files`, which signs a test image once
    so that a bad certificate or key stops the app at start-up rather than failing every save."""

    def __init__(
        self,
        certificate_chain_pem: bytes,
        private_key_pem: bytes,
        generator_name: str,
        generator_version: str,
        timestamp_url: str | None = None,
    ) -> None:
        self.certificate_chain_pem = certificate_chain_pem
        self.private_key_pem = private_key_pem
        self.algorithm = _algorithm(private_key_pem)
        self.generator_name, self.generator_version = generator_name, generator_version
        self.timestamp_url = timestamp_url

    @classmethod
    def from_files(
        cls, certificate: Path, private_key: Path, generator_name: str, generator_version: str
    ) -> C2paSigner:
        try:
            chain, key = Path(certificate).read_bytes(), Path(private_key).read_bytes()
        except OSError as error:
            raise C2paSetupError(f"Cannot read the C2PA certificate or key: {error.strerror or error}.") from None
        signer = cls(chain, key, generator_name, generator_version)
        from PIL import Image

        probe = io.BytesIO()
        Image.new("RGB", (16, 16), (128, 128, 128)).save(probe, format="PNG")
        try:
            signer.sign_png(probe.getvalue())
        except StorageError as error:
            raise C2paSetupError(str(error)) from None
        return signer

    def manifest(self, title: str) -> dict[str, Any]:
        created = {
            "action": "c2pa.created",
            "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
            "softwareAgent": {"name": self.generator_name, "version": self.generator_version},
        }
        return {
            "claim_generator_info": [{"name": self.generator_name, "version": self.generator_version}],
            "title": title,
            "format": "image/png",
            "assertions": [{"label": "c2pa.actions", "data": {"actions": [created]}}],
        }

    def sign_png(self, png: bytes, title: str = "image.png") -> bytes:
        """`png` with a signed manifest embedded (its other chunks, the parameters and XMP, are kept). Raises
        StorageError with a sentence when signing fails: no unsigned copy is written in its place."""
        import c2pa

        info = c2pa.C2paSignerInfo(self.algorithm, self.certificate_chain_pem, self.private_key_pem, self.timestamp_url)
        try:
            with c2pa.Signer.from_info(info) as signer, c2pa.Builder(json.dumps(self.manifest(title))) as builder:
                signed = io.BytesIO()
                builder.sign(signer, "image/png", io.BytesIO(png), signed)
        except c2pa.C2paError as error:
            raise StorageError(f"The C2PA manifest could not be signed ({error}); nothing was saved.") from None
        return signed.getvalue()


def read_c2pa(source: str | Path | bytes) -> dict[str, Any] | None:
    """What a PNG's C2PA manifest says, or None when it has none: {"validation_state", "claim_generator",
    "digital_source_type", "signed_by", "actions"} (validation "Valid" means intact and signed; "Trusted" also needs a
    certificate from a CA on C2PA's trust list). A manifest that cannot be read gives {"error": sentence}."""
    import c2pa

    data = Path(source).read_bytes() if not isinstance(source, bytes) else source
    try:
        context = c2pa.Context(settings=c2pa.Settings.from_dict(OFFLINE))
        reader = c2pa.Reader("image/png", io.BytesIO(data), context=context)
    except c2pa.C2paError as error:
        if "ManifestNotFound" in type(error).__name__ or "no JUMBF" in str(error):
            return None
        return {"error": f"The C2PA manifest could not be read ({str(error)[:200]})."}
    with reader:
        manifest = reader.get_active_manifest() or {}
        state = reader.get_validation_state()
    actions = [
        action
        for assertion in manifest.get("assertions", [])
        if str(assertion.get("label", "")).startswith("c2pa.actions")
        for action in assertion.get("data", {}).get("actions", [])
    ]
    generator = manifest.get("claim_generator_info") or [{}]
    signature = manifest.get("signature_info") or {}
    return {
        "validation_state": state,
        "claim_generator": " ".join(str(generator[0].get(k, "")) for k in ("name", "version")).strip(),
        "digital_source_type": next((a.get("digitalSourceType") for a in actions if a.get("digitalSourceType")), None),
        "signed_by": ", ".join(str(signature[k]) for k in ("common_name", "issuer") if signature.get(k)),
        "actions": [str(a.get("action")) for a in actions],
    }
