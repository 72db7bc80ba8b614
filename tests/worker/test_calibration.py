"""The stock voices' calibration is rendered once per model version, stored in S3, and loaded by fresh engines."""

from __future__ import annotations

import numpy as np
import pytest

from shared.storage import Storage
from tests.conftest import S3Settings
from tests.worker.test_kokoro_engine import SENTENCES
from worker.engines.kokoro import KokoroEngine
from worker.engines.kokoro.calibration import PREFIX, S3CalibrationStore, calibration_key, dump, load
from worker.engines.kokoro.engine import _CALIBRATION

pytestmark = pytest.mark.slow


def _storage(s3: S3Settings) -> Storage:
    storage = Storage(s3.endpoint_url, s3.bucket, s3.access_key, s3.secret_key, s3.region)
    storage.ensure_bucket()
    return storage


def test_a_fresh_engine_loads_the_stored_calibration_instead_of_rendering(module_s3_settings: S3Settings) -> None:
    storage = _storage(module_s3_settings)
    store = S3CalibrationStore(storage)
    first = KokoroEngine(warm_languages=("en",))
    first.calibration_store = store
    reference = first.synthesize(SENTENCES["en"], voice="jm_kumo", language="en").audio
    profile_first = first.clone(reference, 24_000, None)
    assert first.calibrations_rendered == 1
    key = calibration_key(_CALIBRATION, first.capabilities.stock_voices)
    assert key.startswith(PREFIX) and storage.exists(key)

    # A second engine, as a fresh worker elsewhere would build it: its first clone renders nothing.
    second = KokoroEngine(warm_languages=("en",))
    second.calibration_store = S3CalibrationStore(storage)
    profile_second = second.clone(reference, 24_000, None)
    assert second.calibrations_rendered == 0
    assert profile_second.data == profile_first.data
    for name, voice in first._stock_voices().items():
        loaded = second._stock_voices()[name]
        assert np.array_equal(loaded.audio, voice.audio) and loaded.audio.dtype == voice.audio.dtype
        assert np.array_equal(loaded.embedding, voice.embedding)

    # Two workers that both miss compute the same thing: a render on its own, without the store, equals the
    # stored one bit for bit, whatever the engine's thread count.
    alone = KokoroEngine(threads=1, warm_languages=("en",))
    fresh = alone._calibrate()
    assert alone.calibration_store is None
    stored = load(storage.get(key), first.capabilities.stock_voices)
    assert stored is not None
    for name, (audio, embedding) in fresh.items():
        assert np.array_equal(audio, stored[name][0]), name
        assert np.array_equal(embedding, stored[name][1]), name


def test_an_unreadable_or_partial_calibration_is_rendered_again() -> None:
    voices = ("jf_alpha", "jm_kumo")
    data = dump({v: (np.ones(4, dtype=np.float32), np.zeros(3, dtype=np.float32)) for v in voices})
    assert load(data, voices) is not None
    assert load(data, (*voices, "jf_nezumi")) is None
    assert load(b"not an npz", voices) is None


def test_the_key_names_the_model_version_and_changes_with_the_sentences() -> None:
    voices = ("jf_alpha",)
    assert calibration_key(_CALIBRATION, voices) == calibration_key(_CALIBRATION, voices)
    assert calibration_key(_CALIBRATION, voices) != calibration_key((("en", "Another sentence."),), voices)
    assert calibration_key(_CALIBRATION, voices) != calibration_key(_CALIBRATION, ("jm_kumo",))
