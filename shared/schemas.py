"""Request schemas validated at the API boundary."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from shared.audio import mastering
from shared.audio.codecs import FORMATS, rate_problem
from shared.errors import PayloadTooLarge
from shared.provenance.disclosure import Disclosure
from shared.qa import QaOptions, job_setting
from shared.text import lexicon, ssml

Format = Literal["wav", "flac", "mp3", "ogg", "opus", "aac", "pcm"]
assert set(FORMATS) == set(Format.__args__)  # type: ignore[attr-defined]
# The most bytes one character takes in a JSON body: a code point beyond the BMP written as two six-byte
# backslash-u escapes.
MAX_JSON_BYTES_PER_CHAR = 12


def check_text_length(payload: Mapping[str, Any], limit: int, field: str = "text") -> None:
    """Refuse an over-long text as sent, before any validator, normaliser or language detector walks it."""
    value = payload.get(field)
    if isinstance(value, str) and len(value) > limit:
        raise PayloadTooLarge(f"{field} is {len(value)} characters; the limit is {limit}", code="text_too_long")


def clean_text(value: str) -> str:
    """Refuse what no engine or database should see: control characters and unpaired surrogates."""
    for ch in value:
        if (unicodedata.category(ch) == "Cc" and ch not in "\t\n\r") or unicodedata.category(ch) == "Cs":
            raise ValueError(f"contains the control or surrogate character U+{ord(ch):04X}")
    return value


class Loudness(BaseModel):
    """A loudness target in LUFS (ITU-R BS.1770) and the true-peak ceiling it must stay under."""

    model_config = ConfigDict(extra="forbid")

    target: float = Field(ge=mastering.LOUDNESS_RANGE[0], le=mastering.LOUDNESS_RANGE[1])
    true_peak: float = Field(default=mastering.DEFAULT_TRUE_PEAK_DB, ge=-9.0, le=0.0)


class PostProduction(BaseModel):
    """Options applied to the whole line once its segments are joined (shared/audio/mastering.py)."""

    # A LUFS target (e.g. the presets -14, -16, -18; any value in -30..-10), or {"target", "true_peak"}.
    loudness: float | Loudness | None = None
    # Cut leading and trailing silence down to this many seconds.
    trim_silence_s: float | None = Field(default=None, ge=0.0, le=2.0)
    # Make the line last this long: engine speed first, then pitch-keeping time-stretch within 25 %.
    target_duration_s: float | None = Field(default=None, ge=0.3, le=600.0)
    channels: Literal[1, 2] = 1
    # `result.words`: word (zh/ja: character) start and end times, from the engine's own durations where it gives
    # them for every segment, else from a forced alignment of the script (`result.words_source` says which).
    words: bool = False

    @field_validator("loudness")
    @classmethod
    def _loudness_in_range(cls, value: float | Loudness | None) -> float | Loudness | None:
        low, high = mastering.LOUDNESS_RANGE
        if isinstance(value, float | int) and not low <= value <= high:
            raise ValueError(f"loudness must be a LUFS target between {low:g} and {high:g}")
        return value

    def mastering_options(self) -> mastering.Options:
        loudness = Loudness(target=self.loudness) if isinstance(self.loudness, float | int) else self.loudness
        return mastering.Options(
            loudness_lufs=loudness.target if loudness else None,
            true_peak_db=loudness.true_peak if loudness else mastering.DEFAULT_TRUE_PEAK_DB,
            trim_pad_s=self.trim_silence_s,
            target_duration_s=self.target_duration_s,
            channels=self.channels,
            align_words=self.words,
        )


class LexiconItem(BaseModel):
    """How to say one term in this job only (beside the tenant's `/v1/lexicon`); see shared/text/lexicon.py."""

    model_config = ConfigDict(extra="forbid")

    term: str = Field(min_length=1, max_length=lexicon.MAX_TERM_CHARS)
    pronunciation: str = Field(min_length=1, max_length=lexicon.MAX_PRONUNCIATION_CHARS)
    # zh, en or ja; when absent, the alphabet's language, else the term's script.
    language: Literal["zh", "en", "ja"] | None = None
    # pinyin (zh), ipa or arpabet (en), kana (ja); when absent, the language's first.
    alphabet: Literal["pinyin", "ipa", "arpabet", "kana"] | None = None

    @model_validator(mode="after")
    def _valid(self) -> LexiconItem:
        self.entry()  # raises ValueError naming what is wrong (bad pinyin, an alphabet of another language, ...)
        return self

    def entry(self) -> lexicon.Entry:
        entry = lexicon.normalise(self.term, self.language, self.pronunciation, self.alphabet)
        return lexicon.Entry(entry.term, entry.language, entry.pronunciation, entry.alphabet, source="job")


class JobRequest(PostProduction):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    text: str = Field(min_length=1)
    # "ssml": `text` is an SSML document (shared/text/ssml/), checked at submit (400 invalid_ssml).
    text_format: Literal["text", "ssml"] = Field(
        default="text",
        description='"ssml": `text` is an SSML document (the W3C subset Azure, Polly and Google share: speak, p, s, '
        "break, say-as, sub, phoneme, prosody rate and volume, lang, voice, mark); see docs/guide/ssml.md",
    )
    voice: str | None = Field(default=None, min_length=1, max_length=64)
    mode: Literal["clone", "cross_lingual", "instruct"] = "clone"
    instruct: str | None = Field(default=None, max_length=500)
    # Checked against the engine's languages by the API; detected from the text when absent.
    language: str | None = Field(default=None, pattern=r"^[a-z]{2,3}$")
    speed: float = Field(default=1.0, ge=0.5, le=2.0)
    format: Format = "wav"
    sample_rate: int | None = None
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    priority: int = Field(default=5, ge=0, le=9)
    webhook_url: str | None = Field(default=None, max_length=2000)
    # The QA gate (shared/qa.py): true, or the thresholds to check with; off for a job, on for a batch line.
    qa: bool | QaOptions | None = None
    # The engine to speak with; when absent, the cloned voice's engine, the engine with the stock voice, or the
    # farm's default engine. Checked against the engines with live workers.
    engine: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    # One-off pronunciations for this job; the tenant's entries that occur in the text are added at submit.
    lexicon: list[LexiconItem] | None = Field(default=None, max_length=lexicon.MAX_JOB_ENTRIES)
    # A spoken notice that the audio was made by AI, before or after the text (shared/provenance/disclosure.py);
    # when absent, the tenant's default (`voicefarm tenants set-disclosure`, itself "none" unless set).
    disclosure: Disclosure | None = Field(
        default=None,
        description='"start" or "end": a short spoken notice that the audio was generated by AI, in the job\'s '
        'language and voice, before or after the text; "none": no notice. When absent, the tenant\'s default. '
        "See docs/guide/labels.md",
    )
    # The document read at validation, when text_format is "ssml".
    _ssml: ssml.SsmlDocument | None = PrivateAttr(default=None)

    @field_validator("text", "voice", "instruct")
    @classmethod
    def _clean_text(cls, value: str | None) -> str | None:
        return None if value is None else clean_text(value)

    @field_validator("lexicon", mode="before")
    @classmethod
    def _lexicon_cell(cls, value: Any) -> Any:
        # A batch CSV's cell (shared/text/lexicon.parse_cell); JSON bodies give the list itself.
        return lexicon.parse_cell(value) if isinstance(value, str) else value

    @field_validator("text")
    @classmethod
    def _speakable(cls, value: str) -> str:
        if not any(unicodedata.category(ch)[0] in "LN" for ch in value):
            raise ValueError("text has no letters or digits to speak")
        return value

    @model_validator(mode="after")
    def _instruct_matches_mode(self) -> JobRequest:
        if self.mode == "instruct" and not self.instruct:
            raise ValueError("mode 'instruct' needs an 'instruct' text")
        if self.mode != "instruct" and self.instruct:
            raise ValueError("'instruct' is only used with mode 'instruct'")
        problem = rate_problem(self.format, self.sample_rate)
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _read_ssml(self) -> JobRequest:
        # SsmlError is a BadRequest, not a ValueError: it reaches the caller as 400 invalid_ssml, line and column
        # in its message. The document's language and sole voice fill what the request leaves out.
        if self.text_format == "ssml":
            self._ssml = ssml.parse_ssml(self.text, self.language, self.voice)
            self.language = self.language or self._ssml.language
            self.voice = self.voice or self._ssml.sole_voice()
        return self

    def ssml_voices(self) -> list[str]:
        """The voices an SSML text names besides the request's (each must speak on the job's engine)."""
        return [v for v in self._ssml.voices() if v != self.voice] if self._ssml else []

    def ssml_languages(self) -> list[str]:
        """The languages an SSML text's pieces are in besides the request's."""
        return [lang for lang in self._ssml.languages() if lang != self.language] if self._ssml else []

    def ssml_warnings(self) -> list[str]:
        return list(self._ssml.warnings) if self._ssml else []

    def synthesis_fields(self, engine: str, voice: str, language: str, qa_default: bool = False) -> dict[str, Any]:
        """The job row's fields for this request, once its engine, voice and language are settled; `qa_default`
        is whether the gate runs when the request does not say (batch lines: yes)."""
        return {
            "kind": "synthesize",
            "engine": engine,
            # An SSML job keeps the plain text it speaks (subtitles follow it); the document goes in `options`.
            "text": self._ssml.text if self._ssml else self.text,
            "voice": voice,
            "mode": self.mode,
            "qa": job_setting(self.qa, qa_default),
            "instruct": self.instruct,
            "language": language,
            "speed": self.speed,
            "format": self.format,
            "sample_rate": self.sample_rate,
            "seed": self.seed,
            "options": (
                self.mastering_options().to_dict()
                | self._lexicon_options()
                | self._ssml_options()
                | self._disclosure_options()
            )
            or None,
        }

    def _disclosure_options(self) -> dict[str, Any]:
        # As asked, "none" included; shared/tenants.apply_disclosure puts the tenant's default where nothing was
        # asked and drops "none", before the dedup key is computed.
        return {"disclosure": self.disclosure} if self.disclosure else {}

    def _ssml_options(self) -> dict[str, Any]:
        return {"text_format": "ssml", "ssml": self.text} if self._ssml else {}

    def _lexicon_options(self) -> dict[str, Any]:
        # The job's own entries; shared/text/lexicon.attach adds the tenant's that occur in the text.
        return {"lexicon": [item.entry().to_dict() for item in self.lexicon]} if self.lexicon else {}
