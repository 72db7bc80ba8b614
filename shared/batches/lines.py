"""Batch lines at the boundary: parsed from JSON, CSV or JSONL, validated all at once, resolved for an engine.

Every line is checked before anything is written, and every problem is reported, each as
`{line, id, field, code, message}` (`line` counts from 1; 0 is the CSV header). A line is a job request
(shared/schemas.JobRequest) limited to LINE_FIELDS plus its `id`; the batch's `defaults` fill what a line leaves
out. Line ids are the caller's (unique, 1-128 of `[A-Za-z0-9._-]`) or, when absent, the line number zero-padded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import ValidationError

from shared.errors import BadRequest, VoicefarmError
from shared.schemas import JobRequest
from shared.text.language import detect_language

LINE_FIELDS = (
    "text", "voice", "mode", "instruct", "language", "speed", "seed", "format", "sample_rate", "engine",
    # "ssml": the text is an SSML document (shared/text/ssml/)
    "text_format",
    # post-production (shared/audio/mastering.py): a batch default gives the whole series one loudness
    "loudness", "trim_silence_s", "target_duration_s", "channels", "words",
    # one-off pronunciations (shared/text/lexicon.py), beside the tenant's lexicon
    "lexicon",
    # the QA gate (shared/qa.py), on for every line unless the defaults or the line say false or set thresholds
    "qa",
    # the spoken AI notice (shared/provenance/disclosure.py): none, start or end; else the tenant's default
    "disclosure",
)  # fmt: skip
DEFAULT_FIELDS = tuple(f for f in LINE_FIELDS if f != "text")
# What a job row keeps of a line as asked (the rest only in processed form, as `options`).
REQUEST_COLUMNS = ("text", "voice", "mode", "instruct", "language", "speed", "seed", "format", "sample_rate", "engine")
LINE_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class InvalidLines(BadRequest):
    """One or more lines are invalid: all are listed and nothing was written."""

    code = "invalid_lines"
    status = 422


class EngineInfo(Protocol):
    """What line resolution needs of an engine's capabilities."""

    @property
    def name(self) -> str: ...
    @property
    def languages(self) -> tuple[str, ...]: ...
    @property
    def modes(self) -> tuple[str, ...]: ...
    @property
    def stock_voices(self) -> tuple[str, ...]: ...
    @property
    def default_voices(self) -> dict[str, str]: ...


@dataclass(frozen=True)
class Line:
    """A valid line: its id, position (from 1), the job fields it becomes, and the request they came from (the
    line's own fields over the defaults, as sent), which its job row keeps for re-renders."""

    id: str
    number: int
    fields: dict[str, Any]
    request: dict[str, Any] | None = None


def problem(line: int, line_id: str | None, field: str, code: str, message: str) -> dict[str, Any]:
    return {"line": line, "id": line_id, "field": field, "code": code, "message": message}


def check_defaults(defaults: Any) -> dict[str, Any]:
    if defaults is None:
        return {}
    if not isinstance(defaults, Mapping):
        raise BadRequest("defaults must be a JSON object", code="invalid_defaults")
    unknown = sorted(set(defaults) - set(DEFAULT_FIELDS))
    if unknown:
        raise BadRequest(
            f"defaults may set {', '.join(DEFAULT_FIELDS)}; not {', '.join(unknown)}", code="invalid_defaults"
        )
    return {k: v for k, v in defaults.items() if v is not None}


def validate(
    rows: list[Any],
    defaults: Mapping[str, Any],
    engine_for: Callable[[JobRequest], EngineInfo],
    voice_problem: Callable[[str, str], VoicefarmError | None],
    max_chars: int,
) -> list[Line]:
    """Validate every row; raises `InvalidLines` listing all problems, or returns the lines. `engine_for` picks a
    request's engine (raising `VoicefarmError` when none serves it); `voice_problem(voice, engine)` says why a
    voice cannot speak on that engine, or None."""
    problems: list[dict[str, Any]] = []
    lines: list[Line] = []
    width = len(str(len(rows)))
    seen: dict[str, int] = {}
    voice_checks: dict[tuple[str, str], VoicefarmError | None] = {}
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, Mapping):
            problems.append(problem(number, None, "line", "invalid_line", "a line must be a JSON object"))
            continue
        if "__error__" in row:
            problems.append(problem(number, None, "line", "invalid_csv", str(row["__error__"])))
            continue
        raw_id = row.get("id")
        line_id = str(number).zfill(width) if raw_id in (None, "") else raw_id
        bad = len(problems)
        if not isinstance(line_id, str) or not LINE_ID.match(line_id):
            problems.append(problem(number, None, "id", "invalid_line_id", "a line id is 1-128 of A-Z a-z 0-9 . _ -"))
            line_id = None
        elif line_id in seen:
            problems.append(
                problem(number, line_id, "id", "duplicate_line_id", f"line id {line_id!r} is also line {seen[line_id]}")
            )
        else:
            seen[line_id] = number
        unknown = sorted(set(row) - {"id", *LINE_FIELDS})
        for name in unknown:
            problems.append(problem(number, line_id, name, "unknown_field", f"lines may not set {name!r}"))
        text = row.get("text")
        if isinstance(text, str) and len(text) > max_chars:
            problems.append(
                problem(
                    number,
                    line_id,
                    "text",
                    "text_too_long",
                    f"text is {len(text)} characters; the limit is {max_chars}",
                )
            )
        if len(problems) > bad:
            continue
        merged = {**defaults, **{k: v for k, v in row.items() if k in LINE_FIELDS and v is not None}}
        try:
            req = JobRequest.model_validate(merged)
        except ValidationError as exc:
            for error in exc.errors():
                field = ".".join(str(p) for p in error.get("loc", ())) or "line"
                problems.append(problem(number, line_id, field, error["type"], error["msg"]))
            continue
        except VoicefarmError as exc:  # an SSML text that cannot be read (invalid_ssml)
            problems.append(problem(number, line_id, "text", exc.code, exc.message))
            continue
        try:
            engine = engine_for(req)
        except VoicefarmError as exc:
            problems.append(problem(number, line_id, "engine", exc.code, exc.message))
            continue
        fields, issue = resolve(req, engine, voice_problem, voice_checks)
        if issue is not None:
            problems.append(problem(number, line_id, issue[0], issue[1], issue[2]))
            continue
        assert line_id is not None
        lines.append(Line(line_id, number, fields, merged))
    if problems:
        raise InvalidLines(
            f"{len({p['line'] for p in problems})} of {len(rows)} lines are invalid", details={"lines": problems}
        )
    return lines


def resolve(
    req: JobRequest,
    engine: EngineInfo,
    voice_problem: Callable[[str, str], VoicefarmError | None],
    checked: dict[tuple[str, str], VoicefarmError | None],
) -> tuple[dict[str, Any], tuple[str, str, str] | None]:
    """The job fields of a valid request for this engine, or the (field, code, message) that refuses it."""
    language = req.language or detect_language(req.text)
    for spoken in (language, *req.ssml_languages()):  # an SSML text's <lang> pieces too
        if spoken not in engine.languages:
            message = f"language {spoken!r} is not spoken by engine {engine.name}"
            return {}, ("language", "unsupported_language", message)
    if req.mode not in engine.modes:
        return {}, ("mode", "unsupported_mode", f"mode {req.mode!r} is not supported by engine {engine.name}")
    voice = req.voice or engine.default_voices.get(language)
    if voice is None:
        return {}, ("voice", "voice_required", f"engine {engine.name} has no stock voices: name a cloned voice")
    for named in (voice, *req.ssml_voices()):  # an SSML text's <voice name> pieces too
        if (named, engine.name) not in checked:
            checked[named, engine.name] = voice_problem(named, engine.name)
        error = checked[named, engine.name]
        if error is not None:
            return {}, ("voice", error.code, error.message)
    return req.synthesis_fields(engine.name, voice, language, qa_default=True), None


class Take(Protocol):
    """What a re-render reads of a line's current take (a job row)."""

    request: dict[str, Any] | None
    engine: str
    voice: str
    language: str


def rerender_request(
    old: Take, defaults: Mapping[str, Any], changes: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The request of a line's new take, as (asked, to validate). Asked: the previous take's whole request (the
    line's own overrides, the post-production ones included, over the defaults it was made with) with the changes
    on top; a change to null drops the field (back to the farm's default). This is what the new take keeps. To
    validate, the engine, voice and language the previous take was resolved to are pinned under the changes, so a
    series keeps its voice even if the farm's defaults moved; a new text is detected afresh unless a language was
    asked for, and a new voice may pick another engine unless one was asked for."""
    pinned = {"engine": old.engine, "voice": old.voice, "language": old.language}
    if old.request is not None:
        base = dict(old.request)
    else:  # a take from before requests were kept: its row's columns over the batch's defaults
        base = dict(defaults) | {f: getattr(old, f) for f in REQUEST_COLUMNS if f not in pinned}
    asked = {k: v for k, v in (base | dict(changes)).items() if v is not None}
    if "text" in changes and "language" not in asked:
        pinned.pop("language")
    if "voice" in changes and "engine" not in asked:
        pinned.pop("engine")
    return asked, base | pinned | dict(changes)
