"""One synthesis job, start to finish, as a plain function the task calls and tests call directly."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

import numpy as np

from shared import provenance, voices
from shared.audio import mastering
from shared.audio.codecs import encode, fade_edges, join_segments
from shared.errors import BadRequest, EngineError, VoicefarmError
from shared.jobs.state import Attempt
from shared.models import Job
from shared.provenance import watermark
from shared.text import lexicon
from shared.text.normalization import normalize_for_speech
from shared.text.split import is_growing, split_text
from worker import disclosure, ssml_render, takes
from worker.alignment import joined_words
from worker.attempts import run_job
from worker.context import WorkerContext
from worker.engines.base import Synthesis, VoiceProfile
from worker.finisher import Pending, attempt_key
from worker.takes import Take

log = logging.getLogger(__name__)
# Pause between segments: close to a sentence break in read speech.
SEGMENT_PAUSE_S = 0.25
# Fit to slot: a first take further off its slot than this is spoken again at the speed that should fill it.
RETAKE_FOR_SLOT = 0.08


@dataclass(frozen=True)
class JobSpec:
    """The fields of a job row the worker needs, detached from the session."""

    id: str
    tenant_id: str
    text: str
    voice: str
    mode: str
    instruct: str | None
    language: str
    speed: float
    format: str
    sample_rate: int | None
    seed: int | None
    options: dict[str, Any] | None


def run_synthesis(ctx: WorkerContext, job_id: str) -> str:
    """Run an attempt at a job; returns its outcome ("succeeded", "deferred", "failed", "skipped", ...)."""
    return run_job(ctx, job_id, _attempt)


def _attempt(ctx: WorkerContext, job: Job, attempt: Attempt) -> str:
    spec = JobSpec(**{name: getattr(job, name) for name in JobSpec.__dataclass_fields__})
    if job.qa is None:
        return ctx.finisher.finish(_synthesize(ctx, spec, attempt))
    # The QA gate (worker/takes.py): re-takes change seed and speed; the take goes to the gate, not to the user.
    number = takes.take_number(job.qa_takes)
    spec = takes.retake_spec(spec, number)
    pending = _synthesize(ctx, spec, attempt)
    return ctx.finisher.finish(takes.for_gate(pending, spec, number, ctx.settings.testing.take_defect))


def _resolve_voice(ctx: WorkerContext, spec: JobSpec) -> str | VoiceProfile:
    if not voices.is_voice_id(spec.voice):
        return spec.voice
    with ctx.sessions() as session:
        voice = voices.ready_voice(session, spec.tenant_id, spec.voice, ctx.engine.capabilities.name)
        key = voice.profile_key
    if key is None:
        raise BadRequest(f"voice {spec.voice} has no profile", code="voice_not_ready")
    return ctx.profile(key)


def _voices(ctx: WorkerContext, spec: JobSpec) -> Callable[[str], str | VoiceProfile]:
    """Each voice an SSML document names, resolved once (a cloned voice's profile is loaded once)."""
    return cache(lambda name: _resolve_voice(ctx, replace(spec, voice=name)))


def _speak(ctx: WorkerContext, text: str, voice: str | VoiceProfile, spec: JobSpec) -> Synthesis:
    """One segment; anything the engine raises besides a refusal of the input is an engine failure."""
    try:
        return ctx.engine.synthesize(
            text,
            voice=voice,
            mode=spec.mode,  # type: ignore[arg-type]
            instruct=spec.instruct,
            language=spec.language,
            speed=spec.speed,
            seed=spec.seed,
            lexicon=lexicon.job_entries(spec.options),  # the snapshot taken at submit (shared/text/lexicon.py)
        )
    except VoicefarmError:
        raise
    except ValueError as exc:  # the engine's own argument checks (check_segment)
        raise BadRequest(str(exc), code="synthesis_rejected") from exc
    except MemoryError as exc:
        raise EngineError("the engine ran out of memory on this job", code="engine_out_of_memory") from exc
    except Exception as exc:
        log.exception("job %s: the engine failed", spec.id)
        if "out of memory" in str(exc).lower():  # CUDA OOM is a RuntimeError whose text says so
            raise EngineError("the engine ran out of memory on this job", code="engine_out_of_memory") from exc
        raise EngineError("the engine failed on this job; the error has been logged") from exc


def _speak_whole(ctx: WorkerContext, text: str, voice: str | VoiceProfile, spec: JobSpec) -> Synthesis:
    """One script segment's spoken text. Normalising can make it longer than the engine takes in one call
    ("$3.50" is "three dollars fifty cents"); then its pieces are spoken apart and joined as one segment."""
    pieces = split_text(text, ctx.engine.capabilities.max_segment_chars)
    if len(pieces) <= 1:
        return _speak(ctx, text, voice, spec)
    outs = [_speak(ctx, piece, voice, spec) for piece in pieces]
    parts = [_seam(out.audio, out.sample_rate, spec) for out in outs]
    audio, _ = join_segments(parts, outs[0].sample_rate, SEGMENT_PAUSE_S)
    measured = [(out.similarity, len(out.audio)) for out in outs if out.similarity is not None]
    return Synthesis(
        audio=audio,
        sample_rate=outs[0].sample_rate,
        warnings=list(dict.fromkeys(w for out in outs for w in out.warnings)),
        similarity=sum(s * n for s, n in measured) / sum(n for _, n in measured) if measured else None,
    )


def _seam(audio: np.ndarray, rate: int, spec: JobSpec) -> np.ndarray:
    """A segment as it meets the pause beside it: faded in and out for a streamed job (`fade_edges`), so that no
    seam clicks; any other job's as the engine spoke it (its stored audio, and the dedup cache's, unchanged)."""
    return fade_edges(audio, rate) if is_growing(spec.options) else audio


def _render(
    ctx: WorkerContext,
    spec: JobSpec,
    attempt: Attempt,
    texts: list[str],
    voice: str | VoiceProfile,
    speed: float,
    *,
    steps: int = 1,
    first_step: int = 0,
) -> Take:
    """Synthesize every segment; progress counts this take as step `first_step` of `steps` (plus the finish)."""
    take = Take()
    at_speed = replace(spec, speed=round(speed, 3))
    for i, text in enumerate(texts):
        out = _speak_whole(ctx, text, voice, at_speed)
        audio = _seam(out.audio, out.sample_rate, spec)
        ctx.segment_done(attempt, i, len(texts), audio)  # streaming hook (shared/audio/streaming.py)
        take.audios.append(audio)
        if out.similarity is not None:
            take.similarities.append((out.similarity, len(audio)))
            take.similarity_basis = out.similarity_basis
        take.words.append(out.words)
        take.warnings.extend(w for w in out.warnings if w not in take.warnings)
        if i + 1 < len(texts) or first_step + 1 < steps:  # after the last segment the finish's write comes next
            ctx.progress(attempt, (first_step + (i + 1) / len(texts)) / (steps + 1 / len(texts)))
    return take


def _notice(ctx: WorkerContext, spec: JobSpec, voice: str | VoiceProfile) -> disclosure.Notice | None:
    """The job's spoken AI notice, if it has one, spoken as its segments are (the job's speed, not a fit's)."""
    asked = disclosure.notice_for(spec.options, spec.language)
    if asked is None:
        return None
    return disclosure.speak(
        asked, lambda text, language: _speak_whole(ctx, text, voice, replace(spec, language=language))
    )


def _synthesize(ctx: WorkerContext, spec: JobSpec, attempt: Attempt) -> Pending:
    caps = ctx.engine.capabilities
    voice = _resolve_voice(ctx, spec)
    # An SSML job (worker/ssml_render.py): its pieces' segments, each with its own voice, language, speed and gain.
    plan = ssml_render.job_plan(spec.options, spec.language, spec.voice, caps.max_segment_chars)
    # A streamed job's segments start short and grow, so its first audio comes soon (shared/text/split.py).
    texts = plan.texts if plan else split_text(spec.text, caps.max_segment_chars, growing=is_growing(spec.options))
    if not texts:
        raise BadRequest("text has nothing to speak", code="empty_text")
    # Segments keep the script's text (subtitles and alignment follow it); what is spoken is each one normalised,
    # lexicon terms untouched so the engine can apply their pronunciations (shared/text/normalization/).
    keep = [str(item["term"]) for item in (spec.options or {}).get("lexicon") or () if item.get("term")]
    said = plan.said if plan else [normalize_for_speech(text, spec.language, keep) for text in texts]
    rate = caps.sample_rate
    options = mastering.Options.from_dict(spec.options)
    started = time.perf_counter()
    steps = 2 if options.target_duration_s else 1
    if plan is None:
        take = _render(ctx, spec, attempt, said, voice, spec.speed, steps=steps)
        audio, starts = join_segments(take.audios, rate, SEGMENT_PAUSE_S)
    else:
        take = ssml_render.render(ctx, spec, attempt, plan, spec.speed, _voices(ctx, spec), _speak_whole, steps=steps)
        audio, starts = plan.join(take.audios, rate)
    # The spoken AI notice, when the job has one (worker/disclosure.py): the job's voice, seed and speed, in its
    # language; a slot holds the notice and the content, which is fitted to what the notice leaves.
    notice = _notice(ctx, spec, voice)
    slot = options.target_duration_s
    if slot and notice is not None:
        slot = disclosure.content_slot(slot, notice, options.trim_pad_s)
    if slot:
        # Fit to slot, engine speed first: one more take at the speed that should fill the slot, when the first
        # is further off than a light stretch mends well; what is left is stretched (shared/audio/mastering.py).
        spoken = mastering.trim_silence(audio, rate, options.trim_pad_s)[0] if options.trim_pad_s is not None else audio
        duration = len(spoken) / rate
        if abs(duration / slot - 1) > RETAKE_FOR_SLOT:
            speed = mastering.speed_for_slot(duration, slot, spec.speed)
            if plan is None:
                take = _render(ctx, spec, attempt, said, voice, speed, steps=2, first_step=1)
                audio, starts = join_segments(take.audios, rate, SEGMENT_PAUSE_S)
            else:
                take = ssml_render.render(
                    ctx, spec, attempt, plan, speed, _voices(ctx, spec), _speak_whole, steps=2, first_step=1
                )
                audio, starts = plan.join(take.audios, rate)
    compute_s = time.perf_counter() - started
    post_started = time.perf_counter()
    mastered = (
        mastering.master(audio, rate, options)
        if notice is None
        else disclosure.master(notice, audio, rate, options, slot)
    )
    # The watermark goes in last, after loudness, trimming and fit to slot, and before encoding (shared/provenance/).
    marked = watermark.embed(mastered.audio, rate) if ctx.settings.watermark else mastered.audio
    if ctx.settings.watermark and options.loudness_lufs is not None:
        # The mark takes a little energy from the band below 2 kHz (up to about 1 LU): the marked take is levelled
        # again to the target and its true-peak ceiling, a gain the mark survives (docs/benchmarks/watermark.md).
        marked = mastering.normalise_loudness(marked, rate, options.loudness_lufs, options.true_peak_db)
    encoded = encode(marked, rate, spec.format, spec.sample_rate, options.channels)
    # The labels every stored file carries: the AIGC tag naming this job, a signed C2PA manifest (shared/provenance/).
    encoded = provenance.label(encoded, spec.id, ctx.settings)
    post_s = time.perf_counter() - post_started
    words = None
    if options.align_words:
        # The engine's own durations when it gave them for every segment; else a forced alignment (Whisper).
        align_started = time.perf_counter()
        length_s = len(mastered.audio) / rate
        words = joined_words(spec.text, take.words, starts, lambda t: mastered.map_time(t, length_s))
        words_source = "engine"
        if words is None:
            words = disclosure.content_words(ctx.transcriber, mastered, rate, spec.text, spec.language)
            words_source = "alignment"
        words = disclosure.with_notice_words(words, ctx.transcriber, mastered, rate)  # the notice's, marked
        align_s = time.perf_counter() - align_started
    duration_s = len(mastered.audio) / rate
    key = attempt_key(spec.tenant_id, attempt, spec.format)
    segments = [
        {
            "text": text,
            "start_s": mastered.map_time(start, duration_s),
            "end_s": mastered.map_time(start + len(seg) / rate, duration_s),
        }
        for text, seg, start in zip(texts, take.audios, starts, strict=True)
    ]
    warnings = take.warnings + [w for w in mastered.warnings if w not in take.warnings]
    result = {
        "key": key,
        "format": encoded.format,
        "sample_rate": encoded.sample_rate,
        "channels": encoded.channels,
        "duration_s": round(encoded.duration_s, 3),
        "bytes": len(encoded.data),
        "sha256": encoded.sha256,
        "segments": segments,
        # What was spoken: the script with numbers, dates, units, ... written out as words.
        "normalized_text": disclosure.normalized_text(
            (" " if spec.language == "en" else "").join(said), mastered, spec.language
        ),
        "warnings": warnings,
        "engine": caps.name,
        # Speaker similarity to a cloned voice's reference, weighted by each segment's length.
        "similarity": take.similarity(),
        "similarity_basis": take.similarity_basis,
        "loudness": mastered.loudness,
        "rtf": round(compute_s / max(len(audio) / rate, 1e-6), 3),
        # Post-production and encoding, reported apart from the engine's time.
        "post_s": round(post_s, 3),
    }
    if options.to_dict():
        result["options"] = options.to_dict()
    if (notice_at := disclosure.result(mastered)) is not None:  # where the spoken notice is, and what it says
        result["disclosure"] = notice_at
    if plan is not None:  # SSML <mark>s on the output's timeline
        result["marks"] = ssml_render.marks_result(plan, take, starts, rate, lambda t: mastered.map_time(t, duration_s))
    if words is not None:
        result["words"] = words
        result["words_source"] = words_source
        result["align_s"] = round(align_s, 3)
    audio_s = duration_s
    return Pending(attempt, spec.tenant_id, key, encoded.data, encoded.format, result, audio_s, compute_s)
