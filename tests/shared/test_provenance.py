"""The labels of every stored file (shared/provenance/, docs/guide/labels.md): the GB 45438-2025 implicit label as
a tag `AIGC` in each container, read back as ffprobe reads it (ffprobe itself when it is on PATH, else FFmpeg's
demuxers through PyAV), and a C2PA manifest read back with c2pa's Reader."""

from __future__ import annotations

import datetime
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import c2pa
import numpy as np
import pytest

from shared import provenance
from shared.audio.codecs import EXTENSIONS, FORMATS, encode
from shared.config import Settings
from shared.provenance import aigc, certs, manifest
from tests.support import clock

CONTAINERS = [f for f in FORMATS if f != "pcm"]
FIELDS = ["Label", "ContentProducer", "ProduceID", "ReservedCode1", "ContentPropagator", "PropagateID", "ReservedCode2"]


def tone(seconds: float = 1.5, rate: int = 24000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def read_tags(data: bytes, fmt: str, tmp_path: Path) -> dict[str, str]:
    """The file's tags and its audio stream's (Ogg's comments are the stream's in FFmpeg), as ffprobe shows them."""
    if shutil.which("ffprobe"):
        path = tmp_path / f"probe.{EXTENSIONS.get(fmt, fmt)}"
        path.write_bytes(data)
        out = subprocess.run(
            ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        probed = json.loads(out)
        return dict(probed["format"].get("tags", {})) | dict(probed["streams"][0].get("tags", {}))
    with av.open(io.BytesIO(data)) as container:
        return dict(container.metadata) | dict(container.streams.audio[0].metadata)


def decoded(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        return np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    directory = tmp_path_factory.mktemp("c2pa")
    cert, key = certs.ensure_signing_credentials(directory)
    return cert, key, directory / certs.CA_FILE


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("fmt", CONTAINERS)
def test_every_container_carries_the_implicit_label(fmt: str, channels: int, tmp_path: Path) -> None:
    encoded = encode(tone(), 24000, fmt, channels=channels)
    labelled = provenance.label(encoded, "j_0123", Settings(label_producer="声音农场 voicefarm"))
    tags = read_tags(labelled.data, fmt, tmp_path)
    value = json.loads(tags[aigc.TAG])
    assert list(value) == FIELDS
    assert value["Label"] == "1" and value["ProduceID"] == "j_0123" and value["ContentProducer"] == "声音农场 voicefarm"
    # The container changed, the audio did not.
    assert np.array_equal(decoded(labelled.data), decoded(encoded.data))
    assert labelled.sha256 != encoded.sha256 and labelled.duration_s == encoded.duration_s


@pytest.mark.parametrize("fmt", [f for f in CONTAINERS if f != "mp3"])
def test_a_second_label_replaces_the_first(fmt: str, tmp_path: Path) -> None:
    data = encode(tone(0.5), 24000, fmt).data
    twice = aigc.tag(aigc.tag(data, fmt, aigc.implicit_label("a", "j_1")), fmt, aigc.implicit_label("b", "j_2"))
    assert json.loads(read_tags(twice, fmt, tmp_path)[aigc.TAG])["ProduceID"] == "j_2"


def test_pcm_has_no_container_and_is_left_as_it_is() -> None:
    encoded = encode(tone(0.5), 24000, "pcm")
    assert provenance.label(encoded, "j_1", Settings()).data == encoded.data


@pytest.mark.parametrize("fmt", CONTAINERS)
def test_a_c2pa_manifest_where_c2pa_carries_one(fmt: str, signing: tuple[Path, Path, Path], tmp_path: Path) -> None:
    cert, key, ca = signing
    encoded = encode(tone(), 24000, fmt)
    labelled = provenance.label(encoded, "j_42", Settings(c2pa_cert=cert, c2pa_key=key))
    assert json.loads(read_tags(labelled.data, fmt, tmp_path)[aigc.TAG])["ProduceID"] == "j_42"  # kept by signing
    media_type = manifest.MEDIA_TYPES.get(fmt)
    if media_type is None:  # ogg and opus: C2PA defines no Ogg binding
        assert fmt in ("ogg", "opus")
        return
    trust = {"verify": {"verify_trust": True}, "trust": {"trust_anchors": ca.read_text()}}
    with (
        c2pa.Context.from_dict(trust) as context,
        c2pa.Reader(media_type, io.BytesIO(labelled.data), context=context) as reader,
    ):
        assert reader.get_validation_state() == "Trusted"
        active = reader.get_active_manifest()
    assert active is not None and active["title"] == f"j_42.{EXTENSIONS.get(fmt, fmt)}"
    assertions = {a["label"]: a["data"] for a in active["assertions"]}
    created = assertions["c2pa.actions.v2"]["actions"][0]
    assert created["action"] == "c2pa.created"
    assert created["digitalSourceType"] == "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
    assert assertions["voicefarm.aigc"]["ProduceID"] == "j_42"
    # Without the farm's CA among its trust anchors a reader still finds the signature valid.
    with c2pa.Reader(media_type, io.BytesIO(labelled.data)) as reader:
        assert reader.get_validation_state() in ("Valid", "Trusted")
    assert np.array_equal(decoded(labelled.data), decoded(encoded.data))


def test_without_a_certificate_no_manifest_is_written() -> None:
    labelled = provenance.label(encode(tone(0.5), 24000, "wav"), "j_1", Settings())
    with pytest.raises(c2pa.C2paError):
        c2pa.Reader("audio/wav", io.BytesIO(labelled.data))


def test_a_key_that_does_not_fit_the_certificate_is_refused(signing: tuple[Path, Path, Path], tmp_path: Path) -> None:
    cert, _, _ = signing
    _, other_key = certs.ensure_signing_credentials(tmp_path)  # another farm's key
    with pytest.raises((manifest.SigningError, c2pa.C2paError)):
        provenance.label(encode(tone(0.5), 24000, "wav"), "j_1", Settings(c2pa_cert=cert, c2pa_key=other_key))


def test_the_local_ca_is_made_once_and_its_signer_renewed_under_it(tmp_path: Path) -> None:
    cert, key = certs.ensure_signing_credentials(tmp_path)
    ca = (tmp_path / certs.CA_FILE).read_bytes()
    assert certs.ensure_signing_credentials(tmp_path) == (cert, key) and (tmp_path / certs.CA_FILE).read_bytes() == ca
    assert (
        oct(key.stat().st_mode & 0o777) == "0o600"
        and oct((tmp_path / certs.CA_KEY_FILE).stat().st_mode & 0o777) == "0o600"
    )
    from cryptography import x509

    leaf, issuer = x509.load_pem_x509_certificates(cert.read_bytes())
    assert leaf.issuer == issuer.subject and issuer.subject != leaf.subject
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert certs.DOCUMENT_SIGNING in eku
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_settings_are_read_from_their_environment_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VOICEFARM_C2PA_CERT", str(tmp_path / "c.pem"))
    monkeypatch.setenv("VOICEFARM_C2PA_KEY", str(tmp_path / "k.pem"))
    monkeypatch.setenv("VOICEFARM_LABEL_PRODUCER", "Example Co.")
    settings = Settings()
    assert settings.c2pa_cert == tmp_path / "c.pem" and settings.c2pa_key == tmp_path / "k.pem"
    assert settings.label_producer == "Example Co."


def test_the_embedded_farm_hands_its_signing_files_to_every_child(tmp_path: Path) -> None:
    from voicefarm.ops.farm import farm_env

    cert, key = certs.ensure_signing_credentials(tmp_path / "c2pa")
    env = farm_env(Settings(c2pa_cert=cert, c2pa_key=key, secret_key="k", farm_id="f"), tmp_path)
    assert env["VOICEFARM_C2PA_CERT"] == str(cert) and env["VOICEFARM_C2PA_KEY"] == str(key)


def test_a_host_whose_clock_lags_signs_with_the_farms_certificate(tmp_path: Path) -> None:
    """The API host makes the certificate; a worker host ten minutes behind it signs with it (c2pa-rs checks the
    certificate against the signing host's own clock)."""
    cert, key = certs.ensure_signing_credentials(tmp_path / "c2pa")
    shim = clock.build_shim(tmp_path)
    script = (
        "import sys; from pathlib import Path; from shared.audio.codecs import encode; import numpy as np;"
        "from shared.provenance import manifest;"
        "data = encode(np.zeros(24000, dtype=np.float32), 24000, 'wav').data;"
        "signed = manifest.sign(data, 'wav', Path(sys.argv[1]), Path(sys.argv[2]), manifest.manifest_definition('t'));"
        "print(len(signed) > len(data))"
    )
    root = Path(__file__).resolve().parents[2]
    for offset in (-600, 600):
        res = subprocess.run(
            [sys.executable, "-c", script, str(cert), str(key)],
            env=os.environ | clock.skewed(shim, offset) | {"PYTHONPATH": str(root)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 0 and res.stdout.strip() == "True", (offset, res.stderr[-2000:])


def test_a_signer_valid_from_minutes_before_is_renewed_under_the_same_ca(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Farms made before the certificate was backdated a day get a new signer at their next start, same CA."""
    from cryptography import x509

    monkeypatch.setattr(certs, "BACKDATE", datetime.timedelta(minutes=5))
    old_cert, _ = certs.ensure_signing_credentials(tmp_path)
    old = old_cert.read_bytes()
    ca = (tmp_path / certs.CA_FILE).read_bytes()
    monkeypatch.undo()
    cert, _ = certs.ensure_signing_credentials(tmp_path)
    leaf = x509.load_pem_x509_certificates(cert.read_bytes())[0]
    assert cert.read_bytes() != old and (tmp_path / certs.CA_FILE).read_bytes() == ca
    age = datetime.datetime.now(datetime.UTC) - leaf.not_valid_before_utc
    assert age >= datetime.timedelta(days=1) - datetime.timedelta(seconds=60), age
