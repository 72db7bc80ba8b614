"""The QA gate's settings: its checks' thresholds and how many re-takes a failing line gets.

A job asks for the gate with `qa: true` or `qa: {thresholds}` (batch lines have it on unless the batch's defaults
or the line say `qa: false`). Its row keeps what the request set; the gate resolves the thresholds when it runs,
each layer over the one before: these defaults, the tenant's (`tenants.qa`), then the job's own (which already
hold the batch's defaults, merged under the line's). Nothing here imports an engine or a model.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# Measured on kokoro with Whisper base (tests/worker/test_qa.py): good takes score CER <= 0.2 (zh/ja) and WER <= 0.15
# (en) on ordinary lines, matched voices 0.75-0.95 similarity to their reference; the defects sit far beyond.
DEFAULTS: dict[str, float | int] = {
    # Recognised text against the normalised input: character error rate (zh, ja), word error rate (en).
    "max_cer": 0.35,
    "max_wer": 0.35,
    # Speaker similarity (GE2E cosine) of the take to a cloned voice's reference clip.
    "min_similarity": 0.6,
    # Share of samples at or past full scale.
    "max_clipped": 0.001,
    # The longest silence between the first and the last speech, in seconds.
    "max_inner_silence_s": 1.5,
    # The level of the take's last 40 ms against its speech level, in dB: speech cut off mid-sound stays loud.
    "max_tail_db": -20.0,
    # Speech duration against what the text should take at the job's speed (shared/qa_rates: chars or words/s).
    "min_duration_ratio": 0.45,
    "max_duration_ratio": 2.2,
    # Re-takes after a failed first take, each with another seed; the best take is kept.
    "retakes": 2,
}


class QaOptions(BaseModel):
    """A request's own thresholds (any subset of DEFAULTS); what it leaves out comes from the tenant or DEFAULTS."""

    model_config = ConfigDict(extra="forbid")

    max_cer: float | None = Field(default=None, ge=0.0, le=10.0)
    max_wer: float | None = Field(default=None, ge=0.0, le=10.0)
    min_similarity: float | None = Field(default=None, ge=-1.0, le=1.0)
    max_clipped: float | None = Field(default=None, ge=0.0, le=1.0)
    max_inner_silence_s: float | None = Field(default=None, ge=0.0, le=60.0)
    max_tail_db: float | None = Field(default=None, ge=-120.0, le=0.0)
    min_duration_ratio: float | None = Field(default=None, ge=0.0, le=10.0)
    max_duration_ratio: float | None = Field(default=None, ge=0.0, le=100.0)
    retakes: int | None = Field(default=None, ge=0, le=5)

    def overrides(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


def job_setting(qa: bool | QaOptions | None, default: bool) -> dict[str, Any] | None:
    """What a job row keeps in `qa`: None for no gate, else the request's overrides (maybe none)."""
    if qa is None:
        qa = default
    if qa is False:
        return None
    return qa.overrides() if isinstance(qa, QaOptions) else {}


def thresholds(tenant: dict[str, Any] | None, job: dict[str, Any] | None) -> dict[str, Any]:
    """The thresholds a check runs with: DEFAULTS, then the tenant's, then the job's."""
    merged: dict[str, Any] = dict(DEFAULTS)
    for layer in (tenant or {}, job or {}):
        merged.update({k: v for k, v in layer.items() if k in DEFAULTS and v is not None})
    return merged


def check_tenant_settings(values: dict[str, Any]) -> dict[str, Any]:
    """Validate a tenant's thresholds as a request's are validated; raises pydantic's ValidationError."""
    return QaOptions.model_validate(values).overrides()


# A take whose check kept losing its lease (shared/jobs/state.py `end_lapsed_checks`): kept unchecked, for review.
CHECK_LAPSED = "check_lapsed"


def lapsed_verdict(
    take: dict[str, Any], takes: list[dict[str, Any]], lapses: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The result and take history of a job whose waiting take (`take`, the result the synthesis worker stored)
    could not be checked: its check lost its lease `lapses` times. The take is kept, `result.qa` says
    `needs_review` with `reason: check_lapsed`, in the shape worker/qa/step.py gives a line none of whose takes
    passed, so the manifest, the review queue and the webhook treat both alike."""
    details = take.get("qa_take") or {}
    number = len(takes) + 1
    record = {
        "take": number,
        "seed": details.get("seed"),
        "speed": details.get("speed"),
        "worker": details.get("worker"),
        "stored_at": details.get("stored_at"),
        "key": take.get("key"),
        "passed": None,
        "reason": CHECK_LAPSED,
        "check_lapses": lapses,
    }
    history = [*takes, record]
    summary = {
        "passed": False,
        "needs_review": True,
        "reason": CHECK_LAPSED,
        "check_lapses": lapses,
        "takes": number,
        "kept_take": number,
        "checks": {},
        "transcript": None,
        "check_s": round(sum(float(t.get("check_s") or 0.0) for t in takes), 3),
        "history": [{k: t.get(k) for k in ("take", "passed", "seed", "speed")} for t in history],
    }
    result = {k: v for k, v in take.items() if k != "qa_take"} | {"qa": summary}
    return result, history
