"""Clone jobs: turn an uploaded reference clip into a stored, reusable engine voice profile.

A voice sent with a consent recording (shared/provenance/consent.py) is first checked, before any profile is
built: Whisper must hear the statement (the QA gate's normalised error, WER for en and CER for zh/ja, at most
`consent_max_error`) and the farm's words in it, all but at most one (en: as words, within a close mishearing;
zh: as toneless pinyin; ja: as kana readings, so a homophone Whisper writes differently still counts), and the
GE2E speaker encoder must find the reference's speaker in it (similarity at least `consent_min_similarity`). A
refusal fails the job and the voice with `consent_text_mismatch` or `consent_speaker_mismatch`; the record keeps
what was heard and the scores either way.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from shared import voices
from shared.audio.reference import Clip, inspect_upload, normalise, to_wav
from shared.db import transaction
from shared.errors import BadRequest, EngineError, NotFound, VoicefarmError
from shared.jobs import state as jobs
from shared.jobs.state import Attempt
from shared.models import Consent, Job, Voice
from shared.provenance import consent
from shared.text.language import detect_language
from worker.attempts import run_job
from worker.context import WorkerContext
from worker.qa.checks import Embeds, Transcribes, error_rate, text_units

log = logging.getLogger(__name__)


def run_clone(ctx: WorkerContext, job_id: str) -> str:
    return run_job(ctx, job_id, _attempt)


def _attempt(ctx: WorkerContext, job: Job, attempt: Attempt) -> str:
    with ctx.sessions() as session:
        voice = session.get(Voice, job.voice)
        record = consent.for_voice(session, job.voice) if voice is not None else None
    if voice is None:
        raise NotFound(f"voice {job.voice} was deleted", code="voice_not_found")
    verify = record if record is not None and record.method == consent.VERIFIED else None
    try:
        second = (voice.details or {}).get("second_clip_s") is not None
        result = _clone(ctx, attempt, voice.tenant_id, voice.id, voice.transcript, voice.language, second, verify)
    except ValueError as exc:  # the engine's or the reference checks' refusal of this clip
        raise BadRequest(str(exc), code="clone_rejected") from exc
    with transaction(ctx.sessions) as session:
        # Fenced: a stale attempt's profile never becomes the voice's.
        if not jobs.complete(session, attempt, result):
            reason = jobs.refusal(session, attempt)
            session.rollback()
            return reason
        voices.mark_ready(
            session,
            voice.id,
            reference_key=result["reference_key"],
            profile_key=result["profile_key"],
            transcript=result["transcript"],
            language=result["language"],
            duration_s=result["duration_s"],
            details={k: result[k] for k in ("warnings", "build_s", "transcribed", "second_clip_s") if k in result},
        )
    ctx.notify(job.id)
    return "succeeded"


def _clone(
    ctx: WorkerContext,
    attempt: Attempt,
    tenant_id: str,
    voice_id: str,
    transcript: str | None,
    language: str | None,
    second: bool = False,
    verify: Consent | None = None,
) -> dict[str, Any]:
    clip = normalise(inspect_upload(ctx.storage.get(voices.upload_key(tenant_id, voice_id))))
    if verify is not None:
        check_consent(ctx, verify, clip)
        ctx.progress(attempt, 0.2)
    # The same normalisation (rate, loudness) as the reference, so the two are measured alike.
    held_out = (
        normalise(inspect_upload(ctx.storage.get(voices.second_clip_key(tenant_id, voice_id)))) if second else None
    )
    ref_key = voices.reference_key(tenant_id, voice_id, attempt.number)
    ctx.storage.put(ref_key, to_wav(clip), "wav")
    ctx.progress(attempt, 0.3)

    transcribed = not transcript
    if not transcript:
        transcript, detected = ctx.transcriber().transcribe(clip.audio, clip.sample_rate, language)
        language = language or detected
        if not transcript:
            raise BadRequest("no speech was recognised in the reference clip", code="no_speech")
    language = language or detect_language(transcript)
    ctx.progress(attempt, 0.6)

    started = time.perf_counter()
    try:
        profile = ctx.engine.clone(
            clip.audio, clip.sample_rate, transcript, held_out=held_out.audio if held_out is not None else None
        )
    except (VoicefarmError, ValueError):
        raise
    except Exception as exc:
        log.exception("voice %s: the engine failed to build a profile", voice_id)
        raise EngineError("the engine failed to build this voice's profile; the error has been logged") from exc
    build_s = time.perf_counter() - started
    key = voices.profile_key(tenant_id, voice_id, ctx.engine.capabilities.name, attempt.number)
    ctx.storage.put(key, profile.data)
    log.info("voice %s: profile built in %.2f s", voice_id, build_s)
    return {
        "voice_id": voice_id,
        "reference_key": ref_key,
        "profile_key": key,
        "transcript": transcript,
        "transcribed": transcribed,
        "language": language,
        "duration_s": round(clip.duration_s, 3),
        "build_s": round(build_s, 3),
        "warnings": clip.warnings,
        **({"second_clip_s": round(held_out.duration_s, 3)} if held_out is not None else {}),
    }


# -- consent ----------------------------------------------------------------------------------------------------
def check_consent(ctx: WorkerContext, record: Consent, reference: Clip) -> dict[str, Any]:
    """Check a voice's consent recording against its statement and its reference clip; record the verdict, and
    raise `BadRequest` (consent_text_mismatch, consent_speaker_mismatch) when it fails."""
    from worker.evaluators.similarity import shared_encoder

    assert record.recording_key is not None and record.statement is not None
    recording = normalise(inspect_upload(ctx.storage.get(record.recording_key)))
    settings = ctx.settings
    verdict = judge_consent(
        recording,
        reference,
        statement=record.statement,
        words=list(record.words or []),
        language=record.language or "en",
        transcriber=ctx.transcriber(),
        encoder=shared_encoder(),
        max_error=settings.consent_max_error,
        min_similarity=settings.consent_min_similarity,
    )
    code = verdict.pop("error_code")
    transcript = verdict.pop("transcript")
    with transaction(ctx.sessions) as session:
        consent.record_check(session, record.id, transcript=transcript, scores=verdict, error_code=code)
    if code == consent.TEXT_MISMATCH:
        missed = verdict["words_missed"]
        raise BadRequest(
            f"the consent recording does not say its statement: heard {transcript!r}"
            + (f", missing the words {', '.join(missed)}" if len(missed) > consent.MAX_MISSED_WORDS else "")
            + f" (error {verdict['text_error']:.2f}, at most {verdict['max_error']} allowed)",
            code=code,
        )
    if code == consent.SPEAKER_MISMATCH:
        raise BadRequest(
            f"the consent recording's speaker is not the reference's (similarity {verdict['similarity']:.2f}, at "
            f"least {verdict['min_similarity']} needed)",
            code=code,
        )
    log.info("consent %s verified: %s", record.id, verdict)
    return verdict


def judge_consent(
    recording: Clip,
    reference: Clip,
    *,
    statement: str,
    words: list[str],
    language: str,
    transcriber: Transcribes,
    encoder: Embeds,
    max_error: float,
    min_similarity: float,
) -> dict[str, Any]:
    """The checks of a consent recording as plain values: transcript, text error, words missed, similarity, and
    the refusal's code (None when it passes)."""
    heard, _ = transcriber.transcribe(recording.audio, recording.sample_rate, language)
    error = error_rate(statement, heard, language)
    missed = missing_words(words, heard, language)
    a = np.asarray(encoder.embed(recording.audio, recording.sample_rate), dtype=np.float64)
    b = np.asarray(encoder.embed(reference.audio, reference.sample_rate), dtype=np.float64)
    similarity = float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))
    code = None
    if error > max_error or len(missed) > consent.MAX_MISSED_WORDS:
        code = consent.TEXT_MISMATCH
    elif similarity < min_similarity:
        code = consent.SPEAKER_MISMATCH
    return {
        "transcript": heard,
        "text_error": round(error, 4),
        "max_error": max_error,
        "words_missed": missed,
        "similarity": round(similarity, 4),
        "min_similarity": min_similarity,
        "error_code": code,
    }


# A word is heard when the transcript holds it within this character error rate ("mounting" for "mountain",
# "candles" for "candle"); any two of the farm's English words are at least 0.4 apart.
WORD_TOLERANCE = 0.25


def missing_words(words: list[str], heard: str, language: str) -> list[str]:
    """The farm's words that the transcript does not hold, compared as words (en: a word, or two neighbours run
    together, within WORD_TOLERANCE), toneless pinyin (zh) or kana readings (ja)."""
    if language == "en":
        import jiwer

        said = text_units(heard, "en")
        candidates = set(said) | {a + b for a, b in zip(said, said[1:], strict=False)}
        return [
            w
            for w in words
            if not any(jiwer.cer(w.lower(), c) <= WORD_TOLERANCE for c in candidates if abs(len(c) - len(w)) <= 3)
        ]
    spoken = _reading(heard, language)
    return [w for w in words if _reading(w, language) not in spoken]


def _reading(text: str, language: str) -> str:
    chars = "".join(text_units(text, language))
    if language == "zh":
        from pypinyin import lazy_pinyin

        return " " + " ".join(lazy_pinyin(chars)) + " "
    if language == "ja":
        import pyopenjtalk

        return str(pyopenjtalk.g2p(chars, kana=True))
    return chars
