"""Consent before cloning (docs/guide/consent.md): statements, the record kept with each voice, each tenant's policy.

A tenant's policy decides what `POST /v1/voices` needs beside the reference clip:
- `verified` (new tenants): a statement the farm issued (`GET /v1/consent/statement`) read aloud by the reference's
  speaker. The statement holds a few words the farm chose at random, so a recording made for one statement does not
  pass for another; it is single use and expires (`consent_statement_ttl_s`). The clone job checks the recording
  (worker/cloning.py): Whisper must hear the statement and its chosen words (all but at most one), and the speaker
  encoder must find the reference's speaker in it.
- `attested`: the key holder asserts the speaker's consent with the field `consent_attested=true`; the assertion is
  recorded (which key, when).
- `off`: nothing is asked.
A recording and a statement are checked whatever the policy when they are sent.

This module is the one writer of the `consents` table; time decisions (expiry, use) are the database's clock.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from shared.db import db_now
from shared.errors import BadRequest, NotFound
from shared.models import ApiKey, Consent, Tenant

VERIFIED, ATTESTED, OFF = "verified", "attested", "off"
POLICIES = (VERIFIED, ATTESTED, OFF)
LANGUAGES = ("en", "zh", "ja")
# The refusals a clone job gives when a recording does not pass (the voice fails with the code).
TEXT_MISMATCH = "consent_text_mismatch"
SPEAKER_MISMATCH = "consent_speaker_mismatch"
# Four words in each statement; a recording passes with at most one of them misheard. Another statement shares
# three or more of its words by chance once in about 500 draws (English, 37 words), so a recording made for one
# statement does not pass for the next.
WORD_COUNT = 4
MAX_MISSED_WORDS = 1

# A short statement (7-9 s read aloud) and the farm's words: common, concrete and unlike one another, so that
# Whisper writes them as they are and one is not heard for another (English: longer words, which synthetic and
# hurried speech keeps intelligible; any two differ in at least 40 % of their letters). Left out after the farm's
# Whisper missed them in statements read by Debian's flite voices: lighthouse ("like house"), giraffe ("Jorath",
# "Charger"), zebra ("vibra").
STATEMENTS = {
    "en": "I agree that my voice may be cloned from my recordings to make synthetic speech. My words are {words}.",
    "zh": "我同意用我的录音克隆我的声音来合成语音。我的验证词是{words}。",
    "ja": "私は、自分の録音から声を複製して合成音声を作ることに同意します。確認の言葉は{words}です。",
}
_JOINERS = {"en": (", ", " and "), "zh": ("、", "、"), "ja": ("、", "、")}
WORDS = {
    "en": (
        "elephant", "umbrella", "tomato", "banana", "chocolate", "kangaroo", "butterfly", "helicopter", "dinosaur",
        "waterfall", "volcano", "pineapple", "penguin", "octopus", "spaghetti", "alligator", "computer",
        "calendar", "strawberry", "hamburger", "pumpkin", "tornado", "cucumber", "avocado", "camera", "piano",
        "lemonade", "bicycle", "kitchen", "rainbow", "sandwich", "basketball", "dolphin", "cinnamon",
        "mushroom", "popcorn", "snowman",
    ),
    "zh": (
        "苹果", "太阳", "月亮", "森林", "老虎", "熊猫", "蜡烛", "铅笔", "窗户", "城堡",
        "火车", "飞机", "雨伞", "西瓜", "钢琴", "桌子", "面包", "牛奶", "学校", "医院",
        "电话", "书包", "眼镜", "汽车", "花园", "米饭", "手表", "衣服", "朋友", "冬天",
    ),
    "ja": (
        "カメラ", "テレビ", "ピアノ", "バナナ", "トマト", "ギター", "ホテル", "ラジオ", "ボタン", "ノート",
        "タクシー", "コーヒー", "パン", "ケーキ", "メロン", "レモン", "ペン", "バス", "テニス", "ドア",
        "アイス", "ゴルフ", "サッカー", "スキー", "ドラマ", "パズル", "ロボット", "サラダ", "ミルク", "ベッド",
    ),
}  # fmt: skip


def statement_text(language: str, words: list[str]) -> str:
    sep, last = _JOINERS[language]
    joined = sep.join(words[:-1]) + last + words[-1] if len(words) > 1 else words[0]
    return STATEMENTS[language].format(words=joined)


def choose_words(language: str, count: int = WORD_COUNT) -> list[str]:
    """`count` distinct words of the language's list, drawn with the operating system's random source."""
    pool = list(WORDS[language])
    chosen: list[str] = []
    for _ in range(count):
        chosen.append(pool.pop(secrets.randbelow(len(pool))))
    return chosen


# -- policy ---------------------------------------------------------------------------------------------------
def policy(session: Session, tenant_id: str) -> str:
    value = session.scalar(select(Tenant.consent_policy).where(Tenant.id == tenant_id))
    return value or VERIFIED


def set_policy(session: Session, tenant_name: str, value: str) -> Tenant:
    """Set a tenant's (by name) consent policy."""
    if value not in POLICIES:
        raise ValueError(f"a consent policy is one of {', '.join(POLICIES)}")
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        raise NotFound(f"no tenant named {tenant_name!r}", code="tenant_not_found")
    set_policy_by_id(session, tenant.id, value)
    session.refresh(tenant)
    return tenant


def set_policy_by_id(session: Session, tenant_id: str, value: str) -> None:
    if value not in POLICIES:
        raise ValueError(f"a consent policy is one of {', '.join(POLICIES)}")
    session.execute(update(Tenant).where(Tenant.id == tenant_id).values(consent_policy=value))


def required(tenant_policy: str, *, recording: bool, statement_id: str | None, attested: bool) -> str | None:
    """What a clone request brings under the tenant's policy: "verified" (a recording and its statement),
    "attested", or None (policy off, nothing sent). Raises 400 `consent_required` when it falls short, before
    anything is read or stored."""
    if recording != bool(statement_id):
        raise BadRequest(
            "send the consent recording as multipart field 'consent_audio' together with 'consent_id', the id of "
            "the statement it reads (GET /v1/consent/statement)",
            code="consent_required",
        )
    if recording:
        return VERIFIED
    if tenant_policy == VERIFIED:
        raise BadRequest(
            "this tenant clones with verified consent: get a statement from GET /v1/consent/statement, record the "
            "reference's speaker reading it, and send it as 'consent_audio' with 'consent_id'",
            code="consent_required",
        )
    if tenant_policy == ATTESTED:
        if not attested:
            raise BadRequest(
                "this tenant clones with attested consent: send consent_attested=true to assert that the speaker "
                "agreed to the cloning (recorded with your key), or a consent recording",
                code="consent_required",
            )
        return ATTESTED
    return ATTESTED if attested else None


# -- statements -----------------------------------------------------------------------------------------------
def issue_statement(session: Session, tenant_id: str, api_key_id: str | None, language: str, ttl_s: float) -> Consent:
    if language not in LANGUAGES:
        raise BadRequest(f"language must be one of {', '.join(LANGUAGES)}", code="unsupported_language")
    words = choose_words(language)
    now = db_now(session)
    row = Consent(
        tenant_id=tenant_id,
        method=VERIFIED,
        status="issued",
        language=language,
        statement=statement_text(language, words),
        words=words,
        issued_by=api_key_id,
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_s),
    )
    session.add(row)
    session.flush()
    return row


def statement_view(row: Consent) -> dict[str, Any]:
    assert row.expires_at is not None
    return {"id": row.id, "language": row.language, "text": row.statement, "expires_at": row.expires_at.isoformat()}


def use_statement(
    session: Session, tenant_id: str, statement_id: str, voice_id: str, api_key_id: str | None, recording_key: str
) -> Consent:
    """Spend a statement on a voice (its row must be flushed): once, before it expires. Raises 400
    `consent_expired` for a statement that expired or was used, 404 `consent_not_found` for one the tenant never
    had. The voice's consent is then `pending` until its clone job checks the recording."""
    now = db_now(session)
    spent = session.execute(
        update(Consent)
        .where(
            Consent.id == statement_id,
            Consent.tenant_id == tenant_id,
            Consent.status == "issued",
            Consent.used_at.is_(None),
            Consent.expires_at > now,
        )
        .values(status="pending", voice_id=voice_id, used_by=api_key_id, used_at=now, recording_key=recording_key)
        .execution_options(synchronize_session=False)
    )
    row = session.get(Consent, statement_id) if len(statement_id) <= 32 else None
    if row is not None:
        session.refresh(row)
    if row is None or row.tenant_id != tenant_id or row.method != VERIFIED:
        raise NotFound(f"consent statement {statement_id} not found", code="consent_not_found")
    if getattr(spent, "rowcount", 0) != 1:
        why = "was already used: each statement is good for one voice" if row.used_at is not None else "expired"
        raise BadRequest(
            f"consent statement {statement_id} {why}; get a new one from GET /v1/consent/statement",
            code="consent_expired",
        )
    return row


def attest(session: Session, tenant_id: str, voice_id: str, api_key_id: str | None) -> Consent:
    """Record that the key holder asserted the speaker's consent for this voice."""
    now = db_now(session)
    row = Consent(
        tenant_id=tenant_id,
        method=ATTESTED,
        status=ATTESTED,
        created_at=now,
        voice_id=voice_id,
        used_by=api_key_id,
        used_at=now,
    )
    session.add(row)
    session.flush()
    return row


# -- the record -----------------------------------------------------------------------------------------------
def for_voice(session: Session, voice_id: str) -> Consent | None:
    return session.scalar(select(Consent).where(Consent.voice_id == voice_id).order_by(Consent.created_at.desc()))


def record_check(
    session: Session, consent_id: str, *, transcript: str, scores: dict[str, Any], error_code: str | None
) -> None:
    """The clone job's verdict on a pending (or, on a retried attempt, already checked) recording."""
    session.execute(
        update(Consent)
        .where(Consent.id == consent_id, Consent.method == VERIFIED, Consent.status != "issued")
        .values(
            status="refused" if error_code else VERIFIED,
            transcript=transcript,
            scores=scores,
            error_code=error_code,
            checked_at=db_now(session),
        )
        .execution_options(synchronize_session=False)
    )


def delete_for_voice(session: Session, voice_id: str) -> list[str]:
    """Delete a voice's consent rows; returns the object keys of their recordings (the caller deletes those)."""
    keys = [
        key
        for key in session.scalars(select(Consent.recording_key).where(Consent.voice_id == voice_id))
        if key is not None
    ]
    session.execute(delete(Consent).where(Consent.voice_id == voice_id).execution_options(synchronize_session=False))
    return keys


def record_views(session: Session, voice_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The consent records of many voices (a listing) in two queries: voice id -> record view."""
    rows = list(session.scalars(select(Consent).where(Consent.voice_id.in_(voice_ids)).order_by(Consent.created_at)))
    key_ids = {row.used_by for row in rows if row.used_by}
    labels = dict(session.execute(select(ApiKey.id, ApiKey.label).where(ApiKey.id.in_(key_ids))).tuples().all())
    return {row.voice_id: _view(row, labels.get(row.used_by or "")) for row in rows if row.voice_id}


def record_view(session: Session, row: Consent | None) -> dict[str, Any] | None:
    """The consent record shown in a voice's view: how, what was heard, the scores, when, and which key."""
    if row is None:
        return None
    label = session.scalar(select(ApiKey.label).where(ApiKey.id == row.used_by)) if row.used_by else None
    return _view(row, label)


def _view(row: Consent, label: str | None) -> dict[str, Any]:
    view: dict[str, Any] = {"method": row.method, "status": row.status, "key": label}
    view["at"] = row.used_at.isoformat() if row.used_at else None
    if row.method == VERIFIED:
        view |= {
            "statement_id": row.id,
            "language": row.language,
            "statement": row.statement,
            "recording": row.recording_key is not None,
            "transcript": row.transcript,
            "scores": row.scores,
            "checked_at": row.checked_at.isoformat() if row.checked_at else None,
        }
        if row.error_code:
            view["error"] = row.error_code
    return view
