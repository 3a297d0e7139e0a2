"""The C2PA signer the settings ask for: `KREA2_C2PA_CERT` + `KREA2_C2PA_KEY`, checked at start-up by signing once."""

from __future__ import annotations

from collections.abc import Callable

from storage.c2pa_manifest import C2paSetupError, C2paSigner

from .recording import APP_VERSION
from .settings import SettingError, Settings

GENERATOR = "Krea 2 Studio"


def png_signer(settings: Settings) -> Callable[[bytes], bytes] | None:
    """PNG bytes -> the same PNG with a signed C2PA manifest, or None when no certificate is configured. Raises
    SettingError (one line) when only one of the two is set or they cannot sign."""
    certificate, key = settings.c2pa_certificate, settings.c2pa_key
    if certificate is None and key is None:
        return None
    if certificate is None or key is None:
        raise SettingError("KREA2_C2PA_CERT and KREA2_C2PA_KEY must be set together (the certificate and its key)")
    try:
        return C2paSigner.from_files(certificate, key, GENERATOR, APP_VERSION).sign_png
    except C2paSetupError as error:
        raise SettingError(f"KREA2_C2PA_CERT/KREA2_C2PA_KEY cannot sign: {error}") from None
