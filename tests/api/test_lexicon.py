"""The pronunciation lexicon: entries checked at the boundary, `/v1/lexicon` against real PostgreSQL, snapshots in
jobs and batch lines (and so in the dedup key), the kokoro G2P and the cosyvoice inline tokens that apply them, and
by ear: Kokoro says a surname and a made-up word as the entries say, heard back by Whisper."""

from __future__ import annotations

import ast
import io
import os
import re
import tarfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import requests
import soundfile as sf
from flask.testing import FlaskClient
from pypinyin import Style, pinyin
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.storage import Storage
from shared.text import lexicon
from tests.support import needs
from tests.support.asr import transcribe
from tests.support.batches import finish_like_a_worker, row
from tests.support.fixtures import auth, new_api_key
from tests.support.livefarm import LiveFarm, live_farm  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]
# The upstream snapshot folder, as tests/worker/test_cosyvoice_upstream.py finds it.
SNAPSHOTS = Path(os.environ.get("VOICEFARM_UPSTREAM_SNAPSHOTS") or ROOT.parent / "shared" / "upstream")
UPSTREAM_TAR = SNAPSHOTS / "CosyVoice-ace7c47f.tar.gz"
SHAN = ("单老师来了。", "单", "shan4")  # the surname 单 is shàn; pypinyin reads 单老师 as dān
# By ear the entry gives 单 a reading no character Whisper writes for dān shares: 单's own readings include shàn,
# so a transcript of the unchanged line could pass for the surname.
WANG = ("单老师来了。", "单", "wang2")
ZORBLAT = ("Welcome to Zorblat.", "Zorblat", "ˈlʌndən")  # a made-up word said as a real one Whisper knows


def url(language: str, term: str) -> str:
    return f"/v1/lexicon/{language}/{urllib.parse.quote(term, safe='')}"


def put(client: FlaskClient, key: str, language: str, term: str, body: dict) -> tuple[int, dict]:
    response = client.put(url(language, term), json=body, headers=auth(key))
    return response.status_code, response.get_json()


def submit(client: FlaskClient, key: str, body: dict) -> dict:
    response = client.post("/v1/jobs", json=body, headers=auth(key))
    assert response.status_code == 202, response.get_json()
    return dict(response.get_json())


# -- entries, checked ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("term", "language", "pronunciation", "alphabet", "stored"),
    [
        ("曾国藩", None, "zēng guó fān", None, ("zh", "zeng1 guo2 fan1", "pinyin")),
        ("曾国藩", "zh", "zeng1guo2fan1", "pinyin", ("zh", "zeng1 guo2 fan1", "pinyin")),
        ("女", None, "nǚ", None, ("zh", "nv3", "pinyin")),
        ("Kinwa", None, "/ˈkɪnwɑ/", None, ("en", "ˈkɪnwɑ", "ipa")),
        ("nginx", "en", "EH1 N JH IH0 N EH2 K S", "arpabet", ("en", "EH1 N JH IH0 N EH2 K S", "arpabet")),
        ("東京", None, "ひがしきょう", None, ("ja", "ひがしきょう", "kana")),
        ("  New   York ", None, "nuː ˈjɔːk", None, ("en", "nuː ˈjɔːk", "ipa")),
    ],
)
def test_entries_are_checked_and_stored_in_one_form(
    term: str, language: str | None, pronunciation: str, alphabet: str | None, stored: tuple[str, str, str]
) -> None:
    entry = lexicon.normalise(term, language, pronunciation, alphabet)
    assert (entry.language, entry.pronunciation, entry.alphabet) == stored
    assert entry.term == " ".join(term.split())


@pytest.mark.parametrize(
    ("term", "language", "pronunciation", "alphabet", "code", "says"),
    [
        ("曾国藩", None, "zeng guo fan", None, "invalid_pinyin", "no tone"),
        ("曾国藩", None, "zeng1 guo2", None, "invalid_pinyin", "3 characters but the pinyin has 2 syllables"),
        ("曾", None, "zhuang7", None, "invalid_pinyin", "not a pinyin syllable"),
        ("曾", None, "bv1", None, "invalid_pinyin", "not a Mandarin syllable"),
        ("Kinwa", None, "kinwaQ", None, "invalid_ipa", "'Q'"),
        ("Kinwa", None, "K IH1 N W AX", "arpabet", "invalid_arpabet", "'AX' is not an ARPAbet phone"),
        ("Kinwa", "en", "zeng1", "pinyin", "unsupported_alphabet", "not for en"),
        ("東京", "ja", "tokyo", None, "invalid_kana", "hiragana or katakana"),
        ("x" * 65, None, "ɛks", None, "term_too_long", "limit is 64"),
        ("...", None, "ɛks", None, "invalid_term", "no letters"),
    ],
)
def test_bad_entries_say_what_is_wrong(
    term: str, language: str | None, pronunciation: str, alphabet: str | None, code: str, says: str
) -> None:
    with pytest.raises(lexicon.InvalidEntry) as caught:
        lexicon.normalise(term, language, pronunciation, alphabet)
    assert caught.value.code == code and says in str(caught.value)


def test_find_takes_the_longest_term_and_latin_terms_as_whole_words() -> None:
    entries = [
        lexicon.Entry("曾国", "zh", "zeng1 guo2", "pinyin"),
        lexicon.Entry("曾国藩", "zh", "zeng1 guo2 fan1", "pinyin"),
        lexicon.Entry("nginx", "en", "EH1 N JH IH0 N EH2 K S", "arpabet"),
        lexicon.Entry("nginx", "en", "N JH IH1 N K S", "arpabet", source="job"),
    ]
    text = "曾国藩和曾国, NGINX not nginxes"
    spans = lexicon.find(text, entries)
    assert [(text[a:b], e.pronunciation) for a, b, e in spans] == [
        ("曾国藩", "zeng1 guo2 fan1"),
        ("曾国", "zeng1 guo2"),
        ("NGINX", "N JH IH1 N K S"),  # the job's own entry wins over the tenant's
    ]


# -- /v1/lexicon --------------------------------------------------------------------------------------------------
def test_put_get_list_delete_and_isolation(client: FlaskClient, api_key: str, sessions: sessionmaker[Session]) -> None:
    status, created = put(client, api_key, "zh", "曾国藩", {"pronunciation": "zēng guó fān"})
    assert status == 201, created
    assert (created["term"], created["pronunciation"], created["alphabet"]) == ("曾国藩", "zeng1 guo2 fan1", "pinyin")
    status, replaced = put(client, api_key, "zh", "曾国藩", {"pronunciation": "zeng1 guo2 fan2"})
    assert status == 200 and replaced["pronunciation"] == "zeng1 guo2 fan2"
    assert replaced["created_at"] == created["created_at"] and replaced["updated_at"] > created["updated_at"]
    # Any term works in the URL once percent-encoded: spaces, slashes, CJK, kana.
    for language, term, body in [
        ("en", "New York", {"pronunciation": "nuː ˈjɔːk"}),
        ("en", "AC/DC", {"pronunciation": "EY1 S IY1 D IY1 S IY1", "alphabet": "arpabet"}),
        ("ja", "東京", {"pronunciation": "とうきょう"}),
    ]:
        assert put(client, api_key, language, term, body)[0] == 201
        shown = client.get(url(language, term), headers=auth(api_key))
        assert shown.status_code == 200 and shown.get_json()["term"] == term
    page = client.get("/v1/lexicon?limit=2", headers=auth(api_key)).get_json()
    assert [e["term"] for e in page["entries"]] == ["AC/DC", "New York"] and page["next_cursor"]
    rest = client.get(f"/v1/lexicon?limit=2&cursor={page['next_cursor']}", headers=auth(api_key)).get_json()
    assert [e["term"] for e in rest["entries"]] == ["東京", "曾国藩"] and rest["next_cursor"] is None
    only = client.get("/v1/lexicon?language=ja", headers=auth(api_key)).get_json()
    assert [e["term"] for e in only["entries"]] == ["東京"]

    # Another tenant sees none of it and may have its own entry for the same term.
    other = new_api_key(sessions, "other")
    assert client.get("/v1/lexicon", headers=auth(other)).get_json() == {"entries": [], "next_cursor": None}
    assert client.get(url("zh", "曾国藩"), headers=auth(other)).status_code == 404
    assert client.delete(url("zh", "曾国藩"), headers=auth(other)).status_code == 404
    assert put(client, other, "zh", "曾国藩", {"pronunciation": "ceng2 guo2 fan1"})[0] == 201
    assert client.get(url("zh", "曾国藩"), headers=auth(api_key)).get_json()["pronunciation"] == "zeng1 guo2 fan2"

    assert client.delete(url("zh", "曾国藩"), headers=auth(api_key)).status_code == 204
    assert client.get(url("zh", "曾国藩"), headers=auth(api_key)).status_code == 404
    assert client.get(url("zh", "曾国藩"), headers=auth(other)).status_code == 200
    assert client.get("/v1/lexicon", headers={}).status_code == 401


@pytest.mark.parametrize(
    ("language", "term", "body", "status", "code"),
    [
        ("zh", "曾", {"pronunciation": "zeng"}, 400, "invalid_pinyin"),
        ("zh", "曾", {"pronunciation": "zeng1", "alphabet": "ipa"}, 400, "unsupported_alphabet"),
        ("en", "Kinwa", {"pronunciation": "kɪnwɑ!"}, 400, "invalid_ipa"),
        ("ko", "안녕", {"pronunciation": "annyeong"}, 400, "unsupported_language"),
        ("en", "x" * 65, {"pronunciation": "ɛks"}, 400, "term_too_long"),
        ("en", "Kinwa", {"pronunciation": "kɪnwɑ", "extra": 1}, 400, "invalid_request"),
        ("en", "Kinwa", {"pronunciation": ""}, 400, "invalid_request"),
    ],
)
def test_bad_puts_are_refused_with_a_code(
    client: FlaskClient, api_key: str, language: str, term: str, body: dict, status: int, code: str
) -> None:
    got, answer = put(client, api_key, language, term, body)
    assert (got, answer["error"]["code"]) == (status, code), answer
    assert client.get("/v1/lexicon", headers=auth(api_key)).get_json()["entries"] == []


def test_a_bad_cursor_and_a_bad_language_filter(client: FlaskClient, api_key: str) -> None:
    for cursor in ("%%%", "WzFd", "WyJlbiIsICJcdTAwMDAiXQ"):  # not base64 JSON; [1]; ["en", "\u0000"]
        answer = client.get(f"/v1/lexicon?cursor={cursor}", headers=auth(api_key))
        assert answer.status_code == 404 and answer.get_json()["error"]["code"] == "bad_cursor", cursor
    answer = client.get("/v1/lexicon?language=fr", headers=auth(api_key))
    assert answer.status_code == 400 and answer.get_json()["error"]["code"] == "unsupported_language"


# -- snapshots and the dedup key ----------------------------------------------------------------------------------
def test_a_changed_entry_changes_the_cache_key_and_the_cached_answer_is_not_reused(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session], farm_settings: Settings
) -> None:
    storage = Storage.from_settings(farm_settings)
    body = {"text": SHAN[0]}
    plain = submit(client, api_key, body)
    finish_like_a_worker(sessions, storage, plain["id"], data=b"RIFF dan")
    assert submit(client, api_key, body)["status"] == "succeeded"  # cached while nothing changed

    assert put(client, api_key, "zh", SHAN[1], {"pronunciation": SHAN[2]})[0] == 201
    first = submit(client, api_key, body)
    assert first["status"] == "queued"  # the entry is part of the key now: not answered from "dan"
    job = row(sessions, first["id"])
    assert job.options == {"lexicon": [
        {"term": "单", "language": "zh", "pronunciation": "shan4", "alphabet": "pinyin", "source": "tenant"}
    ]}  # fmt: skip
    assert job.cache_key != row(sessions, plain["id"]).cache_key
    finish_like_a_worker(sessions, storage, first["id"], data=b"RIFF shan")
    again = submit(client, api_key, body)
    assert again["status"] == "succeeded" and again["result"]["cached_from"] == first["id"]

    assert put(client, api_key, "zh", SHAN[1], {"pronunciation": "chan2"})[0] == 200
    changed = submit(client, api_key, body)
    assert changed["status"] == "queued"
    assert row(sessions, changed["id"]).cache_key not in {job.cache_key, row(sessions, plain["id"]).cache_key}

    # Deleted, the entry no longer shapes the audio: the first answer is reused again.
    assert client.delete(url("zh", SHAN[1]), headers=auth(api_key)).status_code == 204
    back = submit(client, api_key, body)
    assert back["status"] == "succeeded" and storage.get(row(sessions, back["id"]).result["key"]) == b"RIFF dan"


def test_only_entries_in_the_text_are_snapshotted_and_a_job_entry_wins(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session]
) -> None:
    put(client, api_key, "zh", "单", {"pronunciation": "shan4"})
    put(client, api_key, "zh", "行长", {"pronunciation": "hang2 zhang3"})
    put(client, api_key, "en", "Zorblat", {"pronunciation": "ˈzɔɹblæt"})
    put(client, api_key, "ja", "单", {"pronunciation": "たん"})  # another language's entry never applies to zh
    job = submit(client, api_key, {
        "text": "单老师在zorblat工作。",
        "lexicon": [{"term": "单", "pronunciation": "dān"}, {"term": "工作", "pronunciation": "gong1 zuo4"}],
    })  # fmt: skip
    options = row(sessions, job["id"]).options
    assert options is not None
    assert [(e["source"], e["language"], e["term"], e["pronunciation"]) for e in options["lexicon"]] == [
        ("job", "zh", "单", "dan1"),
        ("job", "zh", "工作", "gong1 zuo4"),
        ("tenant", "en", "Zorblat", "ˈzɔɹblæt"),  # English terms inside Chinese text, whole words, any case
    ]
    bad = client.post("/v1/jobs", json={"text": "单", "lexicon": [{"term": "单", "pronunciation": "dan"}]},
                      headers=auth(api_key))  # fmt: skip
    assert bad.status_code == 400 and "no tone" in bad.get_json()["error"]["message"]


def test_batch_lines_snapshot_the_tenant_lexicon_and_their_own(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session]
) -> None:
    put(client, api_key, "en", "Zorblat", {"pronunciation": "ˈlʌndən"})
    body = {"lines": [
        {"id": "a", "text": ZORBLAT[0]},
        {"id": "b", "text": "Kinwa is here.", "lexicon": [{"term": "Kinwa", "pronunciation": "ˈkɪnwɑ"}]},
        {"id": "c", "text": "Nothing to change."},
    ]}  # fmt: skip
    answer = client.post("/v1/batches", json=body, headers=auth(api_key))
    assert answer.status_code == 202, answer.get_json()
    lines = client.get(f"/v1/batches/{answer.get_json()['id']}/manifest", headers=auth(api_key)).get_json()["lines"]
    options = {line["line_id"]: row(sessions, line["job_id"]).options for line in lines}
    assert options["a"] == {"lexicon": [
        {"term": "Zorblat", "language": "en", "pronunciation": "ˈlʌndən", "alphabet": "ipa", "source": "tenant"}
    ]}  # fmt: skip
    assert options["b"] is not None and [e["term"] for e in options["b"]["lexicon"]] == ["Kinwa"]
    assert not (options["c"] or {}).get("lexicon")


def test_a_csv_line_carries_its_lexicon_in_one_cell(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session]
) -> None:
    data = (
        "id,text,lexicon\n"
        'a,单老师在Zorblat。,"单=shàn; Zorblat=ˈlʌndən"\n'
        'b,Kinwa is here.,"[{""term"": ""Kinwa"", ""pronunciation"": ""K IH1 N W AA0"", ""alphabet"": ""arpabet""}]"\n'
    )
    answer = client.post(
        "/v1/batches",
        data={"file": (io.BytesIO(data.encode()), "lines.csv")},
        headers=auth(api_key),
        content_type="multipart/form-data",
    )
    assert answer.status_code == 202, answer.get_json()
    lines = client.get(f"/v1/batches/{answer.get_json()['id']}/manifest", headers=auth(api_key)).get_json()["lines"]
    snapshot = {line["line_id"]: (row(sessions, line["job_id"]).options or {})["lexicon"] for line in lines}
    assert [(e["term"], e["language"], e["pronunciation"]) for e in snapshot["a"]] == [
        ("Zorblat", "en", "ˈlʌndən"),
        ("单", "zh", "shan4"),
    ]
    assert [(e["term"], e["alphabet"]) for e in snapshot["b"]] == [("Kinwa", "arpabet")]
    bad = client.post(
        "/v1/batches",
        data={"file": (io.BytesIO("text,lexicon\n单老师。,单 shan4\n".encode()), "lines.csv")},
        headers=auth(api_key),
        content_type="multipart/form-data",
    )
    assert bad.status_code == 422 and "term=pronunciation" in str(bad.get_json()), bad.get_json()


# -- the kokoro G2P -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def phonemizer() -> object:
    from worker.engines.kokoro.g2p import Phonemizer

    return Phonemizer()


def test_kokoro_g2p_puts_the_entry_phonemes_where_the_term_was(phonemizer: object) -> None:
    from worker.engines.kokoro.g2p import Phonemizer, pinyin_phonemes

    assert isinstance(phonemizer, Phonemizer)
    text, term, reading = SHAN
    entry = lexicon.normalise(term, None, reading, None)
    default, applied = phonemizer(text, "zh"), phonemizer(text, "zh", [entry])
    shan, dan = pinyin_phonemes("shan4"), pinyin_phonemes("dan1")
    assert applied.startswith(shan) and default.startswith(dan)
    assert applied.removeprefix(shan) == default.removeprefix(dan)  # the rest of the line is phonemised as before
    # The same phonemes misaki gives a character whose only reading is shàn.
    assert shan == phonemizer("善", "zh").rstrip(".")

    text, term, ipa = ZORBLAT
    applied = phonemizer(text, "en", [lexicon.normalise(term, None, ipa, None)])
    london = phonemizer("London", "en")
    assert applied == f"{phonemizer('Welcome to', 'en')} {london}." and london not in phonemizer(text, "en")
    arpabet = lexicon.normalise(term, None, "L AH1 N D AH0 N", "arpabet")
    assert phonemizer(text, "en", [arpabet]) == applied

    kana = lexicon.normalise("東京", None, "ひがしきょう", None)
    applied = phonemizer("東京に行きます。", "ja", [kana])
    assert applied.startswith(phonemizer("ひがしきょう", "ja")) and applied != phonemizer("東京に行きます。", "ja")


# -- cosyvoice inline tokens --------------------------------------------------------------------------------------
def upstream_special_tokens() -> set[str]:
    """The inline tokens CosyVoice3's tokenizer adds, read from the upstream snapshot (the real source)."""
    if not UPSTREAM_TAR.is_file():
        needs.missing(f"the upstream CosyVoice snapshot {UPSTREAM_TAR} is missing")
    with tarfile.open(UPSTREAM_TAR) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("cosyvoice/tokenizer/tokenizer.py"))
        handle = tar.extractfile(member)
        assert handle is not None
        tree = ast.parse(handle.read().decode())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "CosyVoice3Tokenizer")
    for node in ast.walk(cls):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "additional_special_tokens":
                    assert isinstance(value, ast.List)
                    return {str(ast.literal_eval(item)) for item in value.elts}
    raise AssertionError("no additional_special_tokens in upstream's CosyVoice3Tokenizer")


def test_cosyvoice_tokens_are_upstreams() -> None:
    from pypinyin.contrib.tone_convert import to_tone3
    from pypinyin.pinyin_dict import pinyin_dict

    from worker.engines.cosyvoice import inline_pronunciations, pinyin_tokens

    tokens = upstream_special_tokens()
    assert "[j]" in tokens and "[ǐ]" in tokens  # upstream's own example.py: 给 as [j][ǐ]
    assert pinyin_tokens("zeng1 guo2 fan1") == "[z][ēng][g][uó][f][ān]"
    # Every common character's first reading becomes tokens upstream knows (a few rare readings such as m2 or
    # neutral-tone finals like [iao] are not in its list).
    readings = {to_tone3(v.split(",")[0], neutral_tone_with_five=True) for c, v in pinyin_dict.items() if c < 0xA000}
    unknown = {r for r in readings if set(re.findall(r"\[[^]]+]", pinyin_tokens(r))) - tokens}
    assert len(unknown) / len(readings) < 0.02, sorted(unknown)
    assert {"lve4", "nv3", "ju3", "er2", "yi1", "wu3", "shan4", "zhi1", "xiong2"}.isdisjoint(unknown)
    entries = [lexicon.normalise("Kinwa", None, "ˈkɪnwɑ", None), lexicon.normalise("东京", "ja", "とうきょう", None)]
    text = "Kinwa and 东京"
    out = inline_pronunciations(text, lexicon.find(text, entries))
    assert out == "[K][IH1][N][W][AA0] and トウキョウ"
    assert set(re.findall(r"\[[^]]+]", out)) <= tokens


@pytest.fixture
def fake_upstream(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    from tests.worker.test_cosyvoice_engine import _forget_upstream

    _forget_upstream()
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "support" / "fakes"))
    import cosyvoice.cli.cosyvoice as fake

    assert "FAKE" in (fake.__doc__ or "")
    yield fake
    _forget_upstream()


@pytest.mark.parametrize("version", [3, 2])
def test_cosyvoice_engine_sends_inline_pronunciations(fake_upstream: ModuleType, tmp_path: Path, version: int) -> None:
    from tests.worker.test_cosyvoice_engine import TRANSCRIPT, make_engine, reference

    engine = make_engine(tmp_path, version)
    profile = engine.clone(reference(), 24000, TRANSCRIPT)
    entries = [lexicon.normalise(SHAN[1], None, SHAN[2], None)]
    out = engine.synthesize(SHAN[0], voice=profile, language="zh", lexicon=entries)
    model = fake_upstream.INSTANCES[-1]
    (args, _kwargs) = model.calls_to("inference_zero_shot")[-1]
    if version == 3:
        assert args[0] == "[sh][àn]老师来了。" and out.warnings == []
        assert any("[sh][àn]" in piece for piece, _ in model.spoken)  # upstream's frontend keeps them whole
    else:
        assert args[0] == SHAN[0] and "CosyVoice2 takes no inline pronunciations" in out.warnings[0]


# -- by ear -------------------------------------------------------------------------------------------------------
def _readings(heard: str) -> set[str]:
    """Every toneless reading of the first Han character Whisper wrote."""
    first = next((ch for ch in heard if "\u4e00" <= ch <= "\u9fff"), "")
    return set(pinyin(first, style=Style.NORMAL, heteronym=True)[0]) if first else set()


@pytest.mark.slow
def test_kokoro_says_the_entry_by_ear() -> None:
    from worker.engines.kokoro import KokoroEngine

    engine = KokoroEngine(warm_languages=("zh", "en"))
    text, term, reading = WANG
    voice = engine.capabilities.default_voices["zh"]
    default = transcribe(engine.synthesize(text, voice=voice, language="zh").audio, 24000, "zh")
    entry = lexicon.normalise(term, None, reading, None)
    said = transcribe(engine.synthesize(text, voice=voice, language="zh", lexicon=[entry]).audio, 24000, "zh")
    assert "wang" in _readings(said) and "wang" not in _readings(default), (default, said)

    text, term, ipa = ZORBLAT
    voice = engine.capabilities.default_voices["en"]
    default = transcribe(engine.synthesize(text, voice=voice, language="en").audio, 24000, "en")
    entry = lexicon.normalise(term, None, ipa, None)
    said = transcribe(engine.synthesize(text, voice=voice, language="en", lexicon=[entry]).audio, 24000, "en")
    assert "london" in said.lower() and "london" not in default.lower(), (default, said)


@pytest.mark.slow
def test_a_tenant_entry_reaches_the_engine_through_the_farm(live_farm: LiveFarm) -> None:  # noqa: F811
    text, term, reading = WANG
    answer = requests.put(
        f"{live_farm.url}{url('zh', term)}", json={"pronunciation": reading}, headers=live_farm.headers(), timeout=30
    )
    assert answer.status_code == 201, answer.text
    job = requests.post(f"{live_farm.url}/v1/jobs", json={"text": text}, headers=live_farm.headers(), timeout=30)
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    deadline = time.monotonic() + 300
    while (state := requests.get(f"{live_farm.url}/v1/jobs/{job_id}", headers=live_farm.headers(), timeout=30)
           .json())["status"] in ("queued", "running"):  # fmt: skip
        assert time.monotonic() < deadline, live_farm.log_tail()
        time.sleep(1)
    assert state["status"] == "succeeded", (state, live_farm.log_tail())
    assert "wang" in _readings(_heard(live_farm, job_id, "zh")), live_farm.log_tail()

    # A batch line's one-off entry takes the same road (the scheduler sends the line; the QA gate is off here,
    # since the check compares speech with the script, which a made-up word never matches).
    text, term, ipa = ZORBLAT
    line = {"id": "l1", "text": text, "qa": False, "lexicon": [{"term": term, "pronunciation": ipa}]}
    batch = requests.post(
        f"{live_farm.url}/v1/batches", json={"lines": [line]}, headers=live_farm.headers(), timeout=30
    )
    assert batch.status_code == 202, batch.text
    manifest = f"{live_farm.url}/v1/batches/{batch.json()['id']}/manifest"

    def lines() -> list[dict]:
        return list(requests.get(manifest, headers=live_farm.headers(), timeout=30).json()["lines"])

    while lines()[0]["status"] in ("queued", "running"):
        assert time.monotonic() < deadline + 300, live_farm.log_tail()
        time.sleep(1)
    (done,) = lines()
    assert done["status"] == "succeeded", (done, live_farm.log_tail())
    assert "london" in _heard(live_farm, done["job_id"], "en").lower()


def _heard(farm: LiveFarm, job_id: str, language: str) -> str:  # noqa: F811
    audio = requests.get(f"{farm.url}/v1/jobs/{job_id}/audio", headers=farm.headers(), timeout=60)
    assert audio.status_code == 200, audio.text
    samples, rate = sf.read(io.BytesIO(audio.content), dtype="float32")
    return transcribe(np.asarray(samples), rate, language)
