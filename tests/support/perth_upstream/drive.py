"""Run REAL Perth (resemble-perth with torch and torchaudio) on clips, for tests/worker/test_watermark_upstream.py.

Run by the cosyvoice environment's python (torch 2.9.1, torchaudio 2.9.1, librosa): reads `clips.npz` (arrays named
`<name>@<rate>`), writes `perth.npz` with, per clip, Perth's marked audio, the same audio resampled to 32 kHz and back
as Perth's embedder does to the whole signal (so the test can take Perth's mark apart from that round trip), and the
detector's unrounded score on the clip as it is and on its marked audio. Clips named `farm-...` (marked by the
farm) are only scored.
"""

from __future__ import annotations

import argparse

import librosa
import numpy as np
import perth
import torch

parser = argparse.ArgumentParser()
parser.add_argument("clips")
parser.add_argument("out")
args = parser.parse_args()
torch.manual_seed(0)
marker = perth.PerthImplicitWatermarker(device="cpu")
clips = np.load(args.clips)
out: dict[str, np.ndarray] = {}
for name in clips.files:
    rate = int(name.rsplit("@", 1)[1])
    audio = clips[name].astype(np.float32)
    with torch.no_grad():
        out[f"{name}:score"] = np.asarray(marker.get_watermark(audio, sample_rate=rate, round=False), dtype=np.float64)
        if name.startswith("farm-"):  # marked by the farm: only scored
            continue
        marked = np.asarray(marker.apply_watermark(audio, sample_rate=rate), dtype=np.float32)
        out[f"{name}:marked"] = marked
        out[f"{name}:marked_score"] = np.asarray(
            marker.get_watermark(marked, sample_rate=rate, round=False), dtype=np.float64
        )
    there = librosa.resample(audio, orig_sr=rate, target_sr=32000) if rate != 32000 else audio
    out[f"{name}:round_trip"] = librosa.resample(there, orig_sr=32000, target_sr=rate) if rate != 32000 else audio
print(f"perth {perth.__version__} on torch {torch.__version__}: {len(clips.files)} clips", flush=True)
np.savez(args.out, **out)
