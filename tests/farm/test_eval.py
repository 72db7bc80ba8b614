"""`voicefarm eval`: the set builder's clips, and the command against a live farm (API + one kokoro worker)."""

from __future__ import annotations

import json
import os
import subprocess
import unicodedata
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile as sf

from benchmarks.make_eval_set import CLIPS, build
from shared.text.normalization import normalize_for_speech
from tests.support import asr
from tests.support.livefarm import CLI, LiveFarm, live_farm  # noqa: F401  (fixture)
from voicefarm.client.api import Client
from voicefarm.client.eval import load_set


def test_a_set_without_its_clips_is_refused_before_the_farm_is_asked(tmp_path: Path) -> None:
    (tmp_path / "set.jsonl").write_text('{"id": "a", "text": "Hi.", "language": "en", "speaker": "s"}\n')
    env = {"VOICEFARM_API_URL": "http://127.0.0.1:9", "VOICEFARM_API_KEY": "k"}
    done = subprocess.run([*CLI, "eval", str(tmp_path)], env=os.environ | env, capture_output=True, text=True)
    assert done.returncode == 2 and "speaker s has no clone.wav" in done.stderr and done.stdout == ""


@pytest.mark.slow  # transcribes speech
def test_the_builder_makes_valid_clips_of_distinct_speakers(tmp_path: Path) -> None:
    path = build(tmp_path / "set", speakers=2, lines=2)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 3 * 2 * 2 and len({r["id"] for r in rows}) == len(rows)
    assert {r["language"] for r in rows} == {"en", "zh", "ja"}
    assert len(load_set(tmp_path / "set")) == len(rows)
    assert (tmp_path / "set" / "README.md").read_text().count("GPL-3.0") == 1
    embeddings = {}
    from worker.evaluators.similarity import SpeakerEncoder, shared_encoder

    encoder = shared_encoder()
    for speaker in sorted({r["speaker"] for r in rows}):
        folder = tmp_path / "set" / "speakers" / speaker
        clips = {}
        for clip in ("clone", "heldout"):
            info = sf.info(folder / f"{clip}.wav")
            assert info.channels == 1 and info.subtype == "PCM_16"
            # Within what the farm accepts for cloning (3-30 s), and not silent or clipped.
            assert 3.0 < info.duration < 30.0
            audio, rate = sf.read(folder / f"{clip}.wav", dtype="float32")
            assert 0.02 < float(np.sqrt(np.mean(audio**2))) and float(np.max(np.abs(audio))) < 1.0
            clips[clip] = (audio, rate)
        assert (folder / "clone.txt").read_text().strip() != (folder / "heldout.txt").read_text().strip()
        embeddings[speaker] = [encoder.embed(*clips[c]) for c in ("clone", "heldout")]
    # A speaker's two clips sound more alike than two speakers of the same language do.
    for language in ("en", "zh", "ja"):
        a, b = sorted(s for s in embeddings if s.startswith(language))
        same = SpeakerEncoder.similarity(*embeddings[a])
        other = SpeakerEncoder.similarity(embeddings[a][0], embeddings[b][1])
        assert same > other, (language, same, other)
    # And the English clip says its text (Whisper tiny.en, the tests' own recogniser).
    audio, rate = sf.read(tmp_path / "set" / "speakers" / "en_m3" / "clone.wav", dtype="float32")
    heard = asr.transcribe(audio, rate, "en")
    assert asr.error_rate(CLIPS["en"][0], heard, "en") < 0.25, heard


@pytest.mark.slow
def test_eval_prints_the_table_and_its_figures_hold_up(live_farm: LiveFarm, tmp_path: Path) -> None:  # noqa: F811
    root = tmp_path / "set"
    build(root, speakers=1, lines=1)
    out = tmp_path / "lines.json"
    env = live_farm.env | {"VOICEFARM_API_URL": live_farm.url, "VOICEFARM_API_KEY": live_farm.key}
    done = subprocess.run(
        [*CLI, "eval", str(root), "--json", str(out)], env=env, capture_output=True, text=True, timeout=1500
    )
    assert done.returncode == 0, done.stdout + done.stderr + live_farm.log_tail()
    table = {line.split()[0]: line.split() for line in done.stdout.splitlines() if line.split()}
    assert "1 live workers" in done.stdout
    for language, metric in (("en", "WER"), ("zh", "CER"), ("ja", "CER")):
        _, name, error, sim, rtf, lines, failed = table[language]
        assert name == metric and (lines, failed) == ("1", "0")
        assert float(error) >= 0.0 and -1.0 <= float(sim) <= 1.0 and float(rtf) > 0
    assert table["all"][-2:] == ["3", "0"]

    figures = {f["id"]: f for f in json.loads(out.read_text())}
    assert set(figures) == {"en_m3-1", "zh_f2-1", "ja_m1-1"}
    assert all(f["status"] == "succeeded" and f["similarity"] is not None for f in figures.values())
    # Each row is its one line's figure; the similarity is to the held-out clip, so below a perfect match.
    for language, line_id in (("en", "en_m3-1"), ("zh", "zh_f2-1"), ("ja", "ja_m1-1")):
        assert float(table[language][2]) == pytest.approx(100 * figures[line_id]["error_rate"], abs=0.006)
        assert float(table[language][3]) == pytest.approx(figures[line_id]["similarity"], abs=0.0006)
        assert figures[line_id]["similarity"] < 0.99
    # The Chinese CER by hand from the recorded transcript: characters only, both sides in spoken form.
    zh = figures["zh_f2-1"]
    chars = [
        "".join(
            ch
            for ch in normalize_for_speech(unicodedata.normalize("NFKC", t), "zh")
            if unicodedata.category(ch)[0] in "LN"
        )
        for t in (zh["text"], zh["transcript"])
    ]
    assert zh["error_rate"] == pytest.approx(jiwer.cer(chars[0], chars[1]), abs=1e-9)
    # A hand check of the English line: its audio fetched from the farm, transcribed by the tests' own Whisper
    # (tiny.en, not the farm's base model), scored with jiwer on plainly lowercased words.
    en = figures["en_m3-1"]
    client = Client(live_farm.url, live_farm.key)
    job = client.get_job(en["job_id"])
    client.download(job, tmp_path / "en.wav")
    audio, rate = sf.read(tmp_path / "en.wav", dtype="float32")
    words = "".join(ch for ch in en["text"].lower() if ch.isalnum() or ch == " ").split()
    heard = "".join(ch for ch in asr.transcribe(audio, rate, "en").lower() if ch.isalnum() or ch == " ").split()
    by_hand = jiwer.wer(" ".join(words), " ".join(heard))
    assert by_hand <= 0.2 and en["error_rate"] <= 0.2, (en, heard)
    assert abs(en["error_rate"] - by_hand) <= 0.2
    assert en["duration_s"] > 1.0 and en["rtf"] == pytest.approx(en["synthesis_s"] / en["duration_s"])
