"""`voicefarm eval SET`: an evaluation set through a running farm, scored as SEED-TTS-eval scores, per language.

A set is a directory (benchmarks/make_eval_set.py builds one): `set.jsonl`, one utterance a line (id, text,
language, speaker), and `speakers/<speaker>/clone.wav` + `heldout.wav` (optional `clone.txt`, the clip's
transcript, and `speaker.json` with its language). The command clones each speaker's voice from `clone.wav`,
submits every line as one batch (so the scheduler spreads it over all live workers; the QA gate off, a fixed seed:
the first take is what is measured), and scores each take as it arrives with the farm's own QA code
(worker/qa/checks.py): Whisper base transcribes it, CER (zh, ja) or WER (en) between the text and the transcript, both
normalised to spoken form (shared/text/normalization) and stripped of case and punctuation; GE2E speaker
similarity to `heldout.wav`, a clip the voice was not cloned from; the real-time factor is the worker's time from
start to finish of the job over the seconds of audio it made.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import client_settings
from voicefarm.client.api import ApiError, Client, JobView, ManifestLine

METRIC = {"en": "WER"}  # every other language: CER


@dataclass(frozen=True)
class Utterance:
    id: str
    text: str
    language: str
    speaker: str


@dataclass
class Scored:
    """One line's figures; `error_rate` is CER or WER by language, None where the line has no take."""

    id: str
    language: str
    speaker: str
    text: str
    status: str
    job_id: str | None = None
    transcript: str | None = None
    error_rate: float | None = None
    similarity: float | None = None
    duration_s: float | None = None
    synthesis_s: float | None = None
    rtf: float | None = None
    error: str | None = None


@dataclass
class Row:
    language: str
    lines: int = 0
    failed: int = 0
    errors: list[float] = field(default_factory=list)
    similarities: list[float] = field(default_factory=list)
    audio_s: float = 0.0
    synthesis_s: float = 0.0


def load_set(root: Path) -> list[Utterance]:
    """The set's utterances; raises ValueError naming what is missing."""
    path = root / "set.jsonl"
    if not path.is_file():
        raise ValueError(f"{root} has no set.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = [Utterance(str(r["id"]), r["text"], r["language"], r["speaker"]) for r in rows]
    for speaker in sorted({u.speaker for u in lines}):
        for clip in ("clone.wav", "heldout.wav"):
            if not (root / "speakers" / speaker / clip).is_file():
                raise ValueError(f"speaker {speaker} has no {clip}")
    return lines


def _speaker_language(root: Path, speaker: str, lines: list[Utterance]) -> str:
    meta = root / "speakers" / speaker / "speaker.json"
    if meta.is_file():
        return str(json.loads(meta.read_text())["language"])
    return next(u.language for u in lines if u.speaker == speaker)


def clone_voices(client: Client, root: Path, lines: list[Utterance]) -> tuple[dict[str, str], dict[str, str]]:
    """Clone every speaker from its clone.wav (all submitted first, so the workers build them side by side):
    ({speaker: voice id} of the ready ones, {speaker: why not} of the others)."""
    submitted: dict[str, str] = {}
    problems: dict[str, str] = {}
    for speaker in sorted({u.speaker for u in lines}):
        folder = root / "speakers" / speaker
        transcript = folder / "clone.txt"
        try:
            view = client.create_voice(
                folder / "clone.wav",
                transcript=transcript.read_text().strip() if transcript.is_file() else None,
                name=f"eval {speaker}",
                language=_speaker_language(root, speaker, lines),
                # An evaluation set's speakers are the operator's material: its key asserts their consent.
                consent_attested=True,
            )
            submitted[speaker] = view["id"]
        except ApiError as exc:
            problems[speaker] = f"clone refused: {exc}"
    ready: dict[str, str] = {}
    for speaker, voice_id in submitted.items():
        voice = client.wait_voice(voice_id)
        if voice.get("status") == "ready":
            ready[speaker] = voice_id
        else:
            problems[speaker] = f"clone {voice.get('status')}: {voice.get('error')}"
    return ready, problems


class Scorer:
    """The QA gate's own measures (worker/qa/checks.py) on one take, with each held-out clip embedded once."""

    def __init__(self, root: Path, cache_dir: Path):
        from worker.evaluators.asr import Transcriber
        from worker.evaluators.similarity import shared_encoder

        self.root = root
        self.transcriber = Transcriber(cache_dir)
        self.encoder = shared_encoder()
        self._heldout: dict[str, np.ndarray] = {}

    def heldout(self, speaker: str) -> np.ndarray:
        if speaker not in self._heldout:
            import soundfile as sf

            audio, rate = sf.read(self.root / "speakers" / speaker / "heldout.wav", dtype="float32", always_2d=True)
            self._heldout[speaker] = self.encoder.embed(audio.mean(axis=1), rate)
        return self._heldout[speaker]

    def score(self, line: Scored, data: bytes, fmt: str, sample_rate: int) -> None:
        from worker.evaluators.similarity import SpeakerEncoder
        from worker.qa.checks import decode, error_rate, speech_span_s

        audio, rate = decode(data, fmt, sample_rate)
        heard = self.transcriber.transcribe(audio, rate, line.language)[0] if speech_span_s(audio, rate) > 0 else ""
        line.transcript = heard
        # Both sides in spoken form (error_rate runs the farm's normaliser), so Whisper's "9" matches "nine".
        line.error_rate = error_rate(line.text, heard, line.language)
        try:
            line.similarity = SpeakerEncoder.similarity(self.encoder.embed(audio, rate), self.heldout(line.speaker))
        except ValueError:  # too short or silent to embed
            line.similarity = None


def _seconds(job: JobView) -> float | None:
    start, end = job.get("started_at"), job.get("finished_at")
    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def evaluate(
    client: Client,
    root: Path,
    *,
    cache_dir: Path,
    seed: int = 1,
    poll_s: float = 1.0,
    timeout_s: float = 3600.0,
    log: Any = None,
) -> list[Scored]:
    """Clone, synthesize and score the whole set; one `Scored` per line, in the set's order."""
    say = log or (lambda message: None)
    lines = load_set(root)
    scorer = Scorer(root, cache_dir)
    say(f"cloning {len({u.speaker for u in lines})} speakers")
    voices, problems = clone_voices(client, root, lines)
    scored = {u.id: Scored(u.id, u.language, u.speaker, u.text, "pending") for u in lines}
    batch_lines = []
    for u in lines:
        if u.speaker in voices:
            batch_lines.append({"id": u.id, "text": u.text, "language": u.language, "voice": voices[u.speaker]})
        else:
            scored[u.id].status, scored[u.id].error = "failed", problems[u.speaker]
    if batch_lines:
        batch = client.create_batch(
            batch_lines, defaults={"qa": False, "seed": seed, "format": "wav"}, name=f"eval {root.name}"
        )
        say(f"batch {batch['id']}: {len(batch_lines)} lines")
        _follow(client, batch["id"], len(batch_lines), scored, scorer, poll_s, timeout_s, say)
    return [scored[u.id] for u in lines]


def _follow(
    client: Client,
    batch_id: str,
    expected: int,
    scored: dict[str, Scored],
    scorer: Scorer,
    poll_s: float,
    timeout_s: float,
    say: Any,
) -> None:
    """Score each line as its take arrives, so Whisper here runs while the farm still synthesizes."""
    deadline = time.monotonic() + timeout_s
    seen: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="voicefarm-eval-") as tmp:
        while True:
            done = client.get_batch(batch_id)["done"]
            for entry in client.manifest(batch_id):
                if entry["line_id"] in seen or entry["status"] not in ("succeeded", "failed", "canceled"):
                    continue
                seen.add(entry["line_id"])
                _take(client, entry, scored[entry["line_id"]], scorer, Path(tmp))
                line = scored[entry["line_id"]]
                say(f"{line.id}: {line.status} {'' if line.error_rate is None else f'{line.error_rate:.3f}'}")
            if done and len(seen) >= expected:
                return
            if time.monotonic() > deadline:
                for line in scored.values():
                    if line.status == "pending":
                        line.status, line.error = "failed", f"no take within {timeout_s:.0f} s"
                return
            time.sleep(poll_s)


def _take(client: Client, entry: ManifestLine, line: Scored, scorer: Scorer, tmp: Path) -> None:
    line.job_id = entry.get("job_id")
    if entry["status"] != "succeeded":
        line.status, line.error = "failed", f"{entry.get('error_code')}: {entry.get('error_message')}"
        return
    job = client.get_job(str(line.job_id))
    result = job.get("result") or {}
    target = tmp / f"{line.id}.{result.get('format', 'wav')}"
    client.download(job, target)
    line.duration_s = float(result.get("duration_s") or 0.0)
    line.synthesis_s = _seconds(job)
    if line.synthesis_s is not None and line.duration_s > 0:
        line.rtf = line.synthesis_s / line.duration_s
    scorer.score(line, target.read_bytes(), str(result.get("format", "wav")), int(result.get("sample_rate") or 24000))
    line.status = "succeeded"


def rows(scored: list[Scored]) -> list[Row]:
    """One row per language (in the order they first appear), then "all" (its error column left empty: CER and
    WER do not add up)."""
    by_language: dict[str, Row] = {}
    total = Row("all")
    for line in scored:
        for row in (by_language.setdefault(line.language, Row(line.language)), total):
            row.lines += 1
            if line.status != "succeeded":
                row.failed += 1
                continue
            if line.error_rate is not None and row is not total:
                row.errors.append(line.error_rate)
            if line.similarity is not None:
                row.similarities.append(line.similarity)
            if line.rtf is not None and line.duration_s and line.synthesis_s is not None:
                row.audio_s += line.duration_s
                row.synthesis_s += line.synthesis_s
    return [*by_language.values(), total]


def table(scored: list[Scored]) -> str:
    """The per-language table: error rate in % (mean over lines), held-out similarity (mean), RTF (total
    synthesis time over total audio), counts."""
    header = f"{'language':<9}{'metric':<7}{'error %':>8}{'SIM':>8}{'RTF':>8}{'lines':>7}{'failed':>8}"
    out = [header, "-" * len(header)]
    for row in rows(scored):
        metric = "" if row.language == "all" else METRIC.get(row.language, "CER")
        error = f"{100 * float(np.mean(row.errors)):.2f}" if row.errors else "-"
        sim = f"{float(np.mean(row.similarities)):.3f}" if row.similarities else "-"
        rtf = f"{row.synthesis_s / row.audio_s:.3f}" if row.audio_s > 0 else "-"
        out.append(f"{row.language:<9}{metric:<7}{error:>8}{sim:>8}{rtf:>8}{row.lines:>7}{row.failed:>8}")
    return "\n".join(out)


def run(client: Client, root: Path, *, json_path: Path | None, seed: int, quiet: bool) -> int:
    """The command: 0 when every line was synthesized and scored, 1 when some failed, 2 for a set it cannot read."""
    cache_dir = client_settings().data_path / "cache"
    try:
        load_set(root)  # refuse a broken set before anything is cloned
    except (ValueError, KeyError, OSError) as exc:
        print(f"error: {root} is not an evaluation set: {exc}", file=sys.stderr)
        return 2
    live = client.workers().get("workers", [])
    print(f"farm {client.url}: {len(live)} live workers")
    started = time.monotonic()
    log = None if quiet else (lambda message: print(message, file=sys.stderr))
    scored = evaluate(client, root, cache_dir=cache_dir, seed=seed, log=log)
    print(table(scored))
    print(f"{len(scored)} lines in {time.monotonic() - started:.0f} s")
    if json_path is not None:
        json_path.write_text(json.dumps([asdict(s) for s in scored], ensure_ascii=False, indent=1) + "\n")
    return 1 if any(s.status != "succeeded" for s in scored) else 0
