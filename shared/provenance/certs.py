"""A local certificate authority and a C2PA signing certificate for the embedded farm (`voicefarm up`), so that its
files are signed without an operator's certificate. Verifiers trust such a manifest only once they add the CA
(`ca.pem` in the directory) to their trust anchors (docs/guide/labels.md)."""

from __future__ import annotations

import contextlib
import datetime
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

CA_FILE, CA_KEY_FILE = "ca.pem", "ca.key"
CERT_FILE, KEY_FILE = "signer.pem", "signer.key"
# C2PA 2.x, "Certificate profile": a signing certificate names one of these extended key usages and not
# anyExtendedKeyUsage; id-kp-documentSigning (RFC 9336) and id-kp-emailProtection are both accepted.
DOCUMENT_SIGNING = ObjectIdentifier("1.3.6.1.5.5.7.3.36")
CA_DAYS, SIGNER_DAYS, RENEW_DAYS = 3650, 397, 30
# Valid from a day before it is made: the manifest's signing time is the worker host's own clock (c2pa-rs reads it),
# and a worker host whose clock lags the API host's, which makes the certificate, must still sign.
BACKDATE = datetime.timedelta(days=1)


def ensure_signing_credentials(directory: Path, organization: str = "voicefarm") -> tuple[Path, Path]:
    """The signing certificate (PEM: the leaf, then the CA) and its key under `directory`, made on the first call
    and renewed under the same CA when they have under RENEW_DAYS left; returns (certificate, key) paths."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    now = datetime.datetime.now(datetime.UTC)
    if cert_path.exists() and key_path.exists():
        leaf = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
        lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        backdated = lifetime >= datetime.timedelta(days=SIGNER_DAYS) + BACKDATE
        if backdated and leaf.not_valid_after_utc - now > datetime.timedelta(days=RENEW_DAYS):
            return cert_path, key_path  # else renewed: near its end, or made valid from only minutes before
    ca_cert, ca_key = _ensure_ca(directory, organization, now)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        _base(_name(f"{organization} C2PA signer", organization), ca_cert.subject, key.public_key(), now, SIGNER_DAYS)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([DOCUMENT_SIGNING, ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, _cert_pem(leaf) + _cert_pem(ca_cert))
    return cert_path, key_path


def _ensure_ca(
    directory: Path, organization: str, now: datetime.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_path, ca_key_path = directory / CA_FILE, directory / CA_KEY_FILE
    if ca_path.exists() and ca_key_path.exists():
        cert = x509.load_pem_x509_certificate(ca_path.read_bytes())
        key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey) and cert.not_valid_after_utc - now > datetime.timedelta(
            days=SIGNER_DAYS
        ):
            return cert, key
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(f"{organization} local C2PA CA", organization)
    cert = (
        _base(name, name, key.public_key(), now, CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write(ca_key_path, _key_pem(key), private=True)
    _write(ca_path, _cert_pem(cert))
    return cert, key


def _name(common: str, organization: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common), x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)]
    )


def _base(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, now: datetime.datetime, days: int
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Written whole under another name, then renamed over `path`: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
