"""The numpy watermark (shared/provenance/watermark.py) against REAL Perth (resemble-perth 1.0.1 on torch 2.9.1 and
torchaudio 2.9.1), run in the cosyvoice environment of tests/worker/test_cosyvoice_upstream.py (built once and
cached; the farm's `no-deps` packages, Perth among them, are installed there).

The same clips go through both: espeak-ng speech at the farm's 24 kHz, at Perth's own 32 kHz and at 16 kHz, and
noise. Perth's embedder resamples the whole signal to 32 kHz and back; the farm adds only the resampled mark, so
Perth's mark is taken as its output less the same audio's round trip, computed there with the same resampler.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr

from shared.provenance import watermark
from tests.worker.test_cosyvoice_upstream import _run, upstream_env  # noqa: F401 - the fixture

pytestmark = pytest.mark.upstream
DRIVER = Path(__file__).resolve().parents[1] / "support" / "perth_upstream" / "drive.py"
# Near the end the two differ by design: the farm pads the take so its last partial hop is marked too.
EDGE_S = 0.3


def _clips() -> dict[str, np.ndarray]:
    from benchmarks.make_eval_set import Espeak

    espeak = Espeak()
    speech = espeak.speak("The museum is on the right, just past the bakery.", "en+m3", 50, 165)
    said = speech.astype(np.float32) / 32768.0
    other = espeak.speak("She painted the kitchen a bright shade of yellow.", "en+f2", 60, 175)
    noise = np.random.default_rng(7).standard_normal(24000 * 3).astype(np.float32) * 0.05
    return {
        "speech@24000": soxr.resample(said, espeak.rate, 24000).astype(np.float32),
        "speech@32000": soxr.resample(said, espeak.rate, 32000).astype(np.float32),
        "other@16000": soxr.resample(other.astype(np.float32) / 32768.0, espeak.rate, 16000).astype(np.float32),
        "noise@24000": noise,
    }


@pytest.fixture(scope="module")
def perth_run(upstream_env: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:  # noqa: F811
    work = tmp_path_factory.mktemp("perth")
    clips = _clips()
    farm_marked = {f"farm-{name}": watermark.embed(audio, int(name.split("@")[1])) for name, audio in clips.items()}
    np.savez(work / "clips.npz", **clips, **farm_marked)
    proc = _run(upstream_env, str(DRIVER), str(work / "clips.npz"), str(work / "perth.npz"))
    print(proc.stdout)
    perth = np.load(work / "perth.npz")
    return {"clips": clips, "perth": {name: perth[name] for name in perth.files}}


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def test_the_mark_is_perths_mark(perth_run: dict[str, Any]) -> None:
    for name, audio in perth_run["clips"].items():
        rate = int(name.split("@")[1])
        theirs = perth_run["perth"][f"{name}:marked"]
        round_trip = perth_run["perth"][f"{name}:round_trip"]
        ours = watermark.mark(audio, rate)  # what embed adds (before it keeps the take's peak)
        assert ours.shape == audio.shape  # Perth's output is shorter: it drops the last partial hop
        end = len(theirs) - int(EDGE_S * rate)
        perth_mark = theirs[:end] - round_trip[:end]
        our_mark = ours[:end]
        error = _relative(our_mark, perth_mark)
        print(f"{name}: mark {np.sqrt(np.mean(perth_mark**2)):.5f} RMS, relative difference {error:.2e}")
        assert error < 1e-4, (name, error)


def test_the_detector_scores_as_perth_does(perth_run: dict[str, Any]) -> None:
    for name, audio in perth_run["clips"].items():
        rate = int(name.split("@")[1])
        theirs = float(perth_run["perth"][f"{name}:score"])
        ours = watermark.score(audio, rate)
        print(f"{name}: unmarked score Perth {theirs:.6f}, numpy {ours:.6f}")
        assert abs(ours - theirs) < 1e-4, (name, ours, theirs)
        assert ours < watermark.THRESHOLD
        # Perth's own marked output: the same score from both detectors.
        marked_by_perth = perth_run["perth"][f"{name}:marked"]
        theirs, ours = float(perth_run["perth"][f"{name}:marked_score"]), watermark.score(marked_by_perth, rate)
        print(f"{name}: Perth-marked score Perth {theirs:.6f}, numpy {ours:.6f}")
        assert abs(ours - theirs) < 1e-4 and ours > watermark.THRESHOLD, (name, ours, theirs)


def test_perth_finds_the_farm_mark(perth_run: dict[str, Any]) -> None:
    for name in perth_run["clips"]:
        theirs = float(perth_run["perth"][f"farm-{name}:score"])
        print(f"{name} marked by the farm: Perth's score {theirs:.6f}")
        assert theirs > watermark.THRESHOLD, (name, theirs)
