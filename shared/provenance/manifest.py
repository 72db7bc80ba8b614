"""A C2PA manifest in each file whose container C2PA (c2pa-rs, through c2pa-python) can carry: it states that the
audio was created by a trained algorithm (`c2pa.created`, IPTC digital source type `trainedAlgorithmicMedia`),
signed with the operator's certificate and key (`VOICEFARM_C2PA_CERT`, `VOICEFARM_C2PA_KEY`)."""

from __future__ import annotations

import functools
import io
import json
import threading
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

# The API formats C2PA carries, and the media type the SDK is given for each; ogg and opus have no C2PA binding.
MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "aac": "audio/mp4"}
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
_CURVES = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
_lock = threading.Lock()


class SigningError(RuntimeError):
    """The configured certificate or key cannot sign (unreadable, mismatched, an algorithm C2PA does not take)."""


def manifest_definition(title: str, label: dict[str, str] | None = None) -> dict[str, Any]:
    """The manifest: the `c2pa.created` action of trained algorithmic media, and the implicit label's fields."""
    assertions: list[dict[str, Any]] = [
        {
            "label": "c2pa.actions.v2",
            "data": {
                "actions": [
                    {
                        "action": "c2pa.created",
                        "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                        "softwareAgent": {"name": "voicefarm"},
                    }
                ]
            },
        }
    ]
    if label:  # the GB 45438-2025 implicit label's fields, as the AIGC tag holds them
        assertions.append({"label": "voicefarm.aigc", "data": label})
    return {"claim_generator_info": [{"name": "voicefarm"}], "title": title, "assertions": assertions}


def sign(data: bytes, fmt: str, cert: Path, key: Path, definition: dict[str, Any]) -> bytes:
    """`data` with a signed manifest embedded; formats C2PA does not carry come back as they are."""
    import c2pa

    media_type = MEDIA_TYPES.get(fmt)
    if media_type is None:
        return data
    signer = _signer(str(cert), str(key), cert.stat().st_mtime_ns, key.stat().st_mtime_ns)
    out = io.BytesIO()
    with _lock, c2pa.Builder(json.dumps(definition)) as builder:
        builder.sign(signer, media_type, io.BytesIO(data), out)
    return out.getvalue()


@functools.lru_cache(maxsize=4)
def _signer(cert: str, key: str, cert_mtime: int, key_mtime: int) -> Any:
    """One signer a process per certificate and key (a renewed file, a new mtime, a new signer)."""
    import c2pa

    del cert_mtime, key_mtime  # parts of the cache key only
    try:
        chain, pem = Path(cert).read_bytes(), Path(key).read_bytes()
        info = c2pa.C2paSignerInfo(_algorithm(pem), chain, pem, None)
        return c2pa.Signer.from_info(info)
    except (OSError, ValueError, c2pa.C2paError) as exc:
        raise SigningError(f"cannot sign C2PA manifests with {cert} and {key}: {exc}") from exc


def _algorithm(pem: bytes) -> str:
    """The C2PA signing algorithm of a private key: ES256/384/512 by curve, Ed25519, PS256 for RSA."""
    private = serialization.load_pem_private_key(pem, password=None)
    if isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name in _CURVES:
        return _CURVES[private.curve.name]
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(private, rsa.RSAPrivateKey):
        return "ps256"
    raise ValueError(f"a {type(private).__name__} key: C2PA signs with ECDSA P-256/384/521, Ed25519 or RSA-PSS")
