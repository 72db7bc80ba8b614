"""The lexicon's Aho–Corasick matcher (shared/text/lexicon.py `Matcher`) against the per-term regular expressions
it replaced, kept here as the reference: the same snapshot (`attach`) and the same spans (`find`) on random texts
and term sets drawn from the characters where the rules differ (case pairs `re` treats alike, word boundaries,
CJK, overlapping and nested terms, job and tenant entries of one term)."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

import pytest

from shared.text import lexicon
from shared.text.lexicon import Entry, Matcher

# Letters, digits, separators and the characters with surprising case rules (Kelvin sign, long s, dotless and
# dotted i, sharp s and its capital, Greek final sigma, micro sign), plus CJK and kana.
ALPHABET = (
    "aAbBiIkKsStTyY0 1-,.'" + "\u212a\u017f\u0131\u0130\u00df\u1e9e\u03c2\u03c3\u03a3\u00b5\u03bc" + "单位曾国ひが"
)
TERM_ALPHABET = "aAbBiIksStTy0" + "\u212a\u017f\u0131\u00df\u03c3\u00b5" + "单位国ひ"


def reference_occurs(term: str, text: str) -> bool:
    if not re.search(r"[A-Za-z]", term):
        return term in text
    if term.casefold() not in text.casefold():
        return False
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(term)}(?![A-Za-z0-9])", text, re.IGNORECASE) is not None


def reference_spans(text: str, entries: Sequence[Entry]) -> list[tuple[int, int, str]]:
    terms = sorted({e.term for e in entries}, key=len, reverse=True)
    alternatives = "|".join(
        rf"(?<![A-Za-z0-9])(?i:{re.escape(t)})(?![A-Za-z0-9])" if re.search(r"[A-Za-z]", t) else re.escape(t)
        for t in terms
    )
    return [(m.start(), m.end(), m.group()) for m in re.finditer(alternatives, text)]


def random_text(rng: random.Random, size: int, alphabet: str = ALPHABET) -> str:
    return "".join(rng.choice(alphabet) for _ in range(size))


def random_terms(rng: random.Random, text: str, count: int) -> list[str]:
    terms = set()
    while len(terms) < count:
        if rng.random() < 0.6 and len(text) > 3:  # a piece of the text, its case changed now and then
            start = rng.randrange(len(text) - 1)
            term = text[start : start + rng.randint(1, 5)]
            term = term.upper() if rng.random() < 0.3 else term
        else:
            term = "".join(rng.choice(TERM_ALPHABET) for _ in range(rng.randint(1, 4)))
        if term.strip(" -,.'") == term and any(ch.isalnum() for ch in term):
            terms.add(term)
    return sorted(terms)


@pytest.mark.parametrize("seed", range(300))
def test_matcher_agrees_with_the_per_term_expressions(seed: int) -> None:
    rng = random.Random(seed)
    # A third of the texts in ASCII alone: the matcher's fast path (no expression) decides there.
    text = random_text(rng, rng.randint(0, 60), ALPHABET if seed % 3 else "aAbBiIkKsStTyY0 1-,.'")
    terms = random_terms(rng, text or "ab", rng.randint(1, 12))
    entries = [Entry(t, "en", "x", "ipa", source=rng.choice(("job", "tenant"))) for t in terms]
    occurring = Matcher(entries).occurring(text)
    assert occurring == {t for t in terms if reference_occurs(t, text)}, (text, terms)
    found = lexicon.find(text, entries)
    expected = reference_spans(text, entries)
    assert [(s, e) for s, e, _ in found] == [(s, e) for s, e, _ in expected], (text, terms)
    for (_, _, entry), (_, _, matched) in zip(found, expected, strict=True):
        assert entry.term.casefold() == matched.casefold() or lexicon.fold(entry.term) == lexicon.fold(matched)


def test_job_entry_beats_tenant_entry_and_exact_case_beats_others() -> None:
    entries = [
        Entry("Apple", "en", "ˈæpəl", "ipa"),
        Entry("apple", "en", "ˈɑpəl", "ipa", source="job"),
        Entry("单", "zh", "shan4", "pinyin"),
        Entry("单", "zh", "dan1", "pinyin", source="job"),
        Entry("单位", "zh", "dan1 wei4", "pinyin"),
    ]
    spans = lexicon.find("Apple apple APPLE 单 单位", entries)
    assert [(s, e, entry.pronunciation) for s, e, entry in spans] == [
        (0, 5, "ˈæpəl"),  # the exact-case entry
        (6, 11, "ˈɑpəl"),  # the job's entry, exact case too
        (12, 17, "ˈɑpəl"),  # no exact case: the job's entry wins
        (18, 19, "dan1"),  # the job's entry beats the tenant's
        (20, 22, "dan1 wei4"),  # the longest term at its place
    ]


def test_attach_snapshots_the_same_entries_as_before() -> None:
    rng = random.Random(7)
    tenant = [Entry(t, rng.choice(("en", "zh")), "x", "ipa") for t in random_terms(rng, random_text(rng, 200), 40) if t]
    rows = [{"text": random_text(rng, 80), "language": rng.choice(("en", "zh")), "options": None} for _ in range(50)]
    rows[0]["options"] = {"lexicon": [Entry(tenant[0].term, tenant[0].language, "y", "ipa", "job").to_dict()]}
    expected = []
    for row in rows:
        own = lexicon.job_entries(row["options"])
        mine = {(e.language, e.term) for e in own}
        found = [
            e
            for e in tenant
            if e.language in (row["language"], "en")
            and (e.language, e.term) not in mine
            and reference_occurs(e.term, str(row["text"]))
        ]
        expected.append(sorted(own + found, key=lambda e: (e.source, e.language, e.term)))
    lexicon.attach_entries(tenant, rows)
    for row, snapshot in zip(rows, expected, strict=True):
        assert lexicon.job_entries(row["options"]) == snapshot


def test_one_automaton_per_attach_call(monkeypatch: pytest.MonkeyPatch) -> None:
    built = []
    original = Matcher.__init__

    def counting(self: Matcher, entries: Sequence[Entry]) -> None:
        built.append(len(entries))
        original(self, entries)

    monkeypatch.setattr(Matcher, "__init__", counting)
    tenant = [Entry(f"term{i}", "en", "x", "ipa") for i in range(100)]
    rows = [{"text": f"say term{i} twice term{i}", "language": "en", "options": None} for i in range(100)]
    lexicon.attach_entries(tenant, rows)
    assert built == [100]
    assert [e["term"] for e in rows[42]["options"]["lexicon"]] == ["term42"]
