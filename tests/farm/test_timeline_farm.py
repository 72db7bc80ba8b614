"""Ready for the timeline, end to end on a real farm (`voicefarm api` + a kokoro worker over the session's
PostgreSQL, Redis and SeaweedFS): one batch line with a loudness target, a slot to fill, a lexicon entry and a
number comes back at the loudness, within the slot, with the term said as the lexicon says and the number as words,
and with subtitles whose text is the script. Every figure is measured again here on the downloaded audio, not read
from the job's own report."""

from __future__ import annotations

import io
import time
import zipfile

import numpy as np
import pyloudnorm
import pysubs2
import pytest
import requests
import soundfile as sf
import soxr

from shared.audio import mastering
from tests.support.asr import transcribe
from tests.support.livefarm import LiveFarm, live_farm  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow

# A made-up word the lexicon says as a real one Whisper knows, and a sum the engine must read as words.
SCRIPT = "Welcome to Zorblat, where a ticket costs $25 today."
TERM, IPA = "Zorblat", "ˈlʌndən"
SLOT_S = 4.0


def test_a_batch_line_comes_back_ready_for_the_timeline(live_farm: LiveFarm) -> None:  # noqa: F811
    line = {
        "id": "scene-7",
        "text": SCRIPT,
        "loudness": -16,
        "target_duration_s": SLOT_S,
        "lexicon": [{"term": TERM, "pronunciation": IPA}],
        # The gate compares speech with the script, which a made-up word said as another never matches.
        "qa": False,
    }
    created = requests.post(
        f"{live_farm.url}/v1/batches", json={"lines": [line]}, headers=live_farm.headers(), timeout=30
    )
    assert created.status_code == 202, created.text
    batch_id = created.json()["id"]
    deadline = time.monotonic() + 400
    while True:
        view = requests.get(f"{live_farm.url}/v1/batches/{batch_id}", headers=live_farm.headers(), timeout=30).json()
        if view["done"]:
            break
        assert time.monotonic() < deadline, live_farm.log_tail()
        time.sleep(1)
    manifest = requests.get(
        f"{live_farm.url}/v1/batches/{batch_id}/manifest", headers=live_farm.headers(), timeout=30
    ).json()
    (row,) = manifest["lines"]
    assert row["status"] == "succeeded", (row, live_farm.log_tail())
    job = requests.get(f"{live_farm.url}/v1/jobs/{row['job_id']}", headers=live_farm.headers(), timeout=30).json()
    result = job["result"]

    # The number was spoken as words, the term left for the lexicon.
    assert "twenty-five dollars" in result["normalized_text"] and TERM in result["normalized_text"], result

    archive = requests.get(f"{live_farm.url}/v1/batches/{batch_id}/archive", headers=live_farm.headers(), timeout=60)
    assert archive.status_code == 200
    files = zipfile.ZipFile(io.BytesIO(archive.content))
    audio, rate = sf.read(io.BytesIO(files.read("scene-7.wav")), dtype="float64")

    # Loudness and true peak, measured again on what came back.
    loudness = pyloudnorm.Meter(rate).integrated_loudness(audio)
    assert loudness == pytest.approx(-16.0, abs=0.5), loudness
    peak_db = 20 * np.log10(np.max(np.abs(soxr.resample(audio, rate, 4 * rate))) + 1e-12)  # 4x, as BS.1770
    assert peak_db <= -1.0 + 0.1, peak_db

    # Within the slot, or a warning that says how far off it is.
    duration = len(audio) / rate
    off = abs(duration / SLOT_S - 1)
    print(f"{duration:.3f} s for a {SLOT_S} s slot, {loudness:.2f} LUFS, peak {peak_db:.2f} dBTP; {result['warnings']}")
    assert off <= mastering.FIT_TOLERANCE + 0.005 or any("slot" in w for w in result["warnings"]), (duration, result)

    # Heard: the lexicon's reading, and the sum.
    heard = transcribe(audio.astype(np.float32), rate, "en").lower()
    assert "london" in heard and ("25" in heard or "twenty" in heard), heard

    # Subtitles say the script, and follow the fitted timing.
    cues = pysubs2.SSAFile.from_string(files.read("scene-7.srt").decode(), format_="srt")
    assert " ".join(e.plaintext.replace("\n", " ") for e in cues) == SCRIPT
    assert cues[-1].end / 1000 <= duration + 0.05, (cues[-1].end, duration)
    vtt = requests.get(
        f"{live_farm.url}/v1/jobs/{row['job_id']}/subtitles?format=vtt", headers=live_farm.headers(), timeout=30
    )
    assert vtt.status_code == 200 and vtt.text.startswith("WEBVTT")
    cues = pysubs2.SSAFile.from_string(vtt.text, format_="vtt")
    assert " ".join(e.plaintext.replace("\n", " ") for e in cues) == SCRIPT
