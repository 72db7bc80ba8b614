"""Mandarin tones: where kokoro's tone errors come from, scored on tone-number pinyin.

    .venv/bin/python benchmarks/mandarin_tones.py [--voices jm_kumo,jf_alpha] [--g2p-only] [--limit N]

SENTENCES is the test set: the project's own sentences covering 3-3 sandhi (你好, 展览馆, 两本), 一 and 不 sandhi,
neutral tones (的, 了, 子, 们, reduplications, 朋友/东西/衣服), and polyphones (行, 长, 还, 觉, 乐, 都, 重, 地, 得).
Each comes with the pinyin a careful Putonghua speaker says (tones after sandhi, 5 = neutral), checked by hand:
that is the reference for the G2P.

Three scores, so that G2P-side, model-side and recogniser-side errors can be told apart:
  1. G2P: the syllables kokoro's zh G2P speaks (shared/text/normalization, then worker/engines/kokoro/g2p.py) against
     the expected pinyin: tone errors (syllable right, tone wrong) and syllable errors (toneless), plus how many
     sentences' phoneme strings equal the expected pinyin's phonemes exactly.
  2. ASR: each sentence synthesized with a stock voice and transcribed by Whisper base (tests/support/asr.py); the
     transcript and the script both read by pypinyin (tone3, citation tones: the same reader on both sides, so
     sandhi does not count) and compared: CER on characters, TER on syllables with tones, SER on toneless
     syllables. TER - SER is what the listener heard with a wrong tone; CER - TER is homophones (the recogniser
     chose another character with the same reading).
  3. Both for the G2P before (misaki's citation tones, `Phonemizer(zh_sandhi=False)`) and after (tone sandhi and
     neutral tones, the default).
"""

from __future__ import annotations

import argparse
import difflib
import os
import platform
import statistics
import sys
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.text.normalization import normalize_for_speech  # noqa: E402

# (script, expected pinyin as said: one tone-number syllable per Han character, 5 = neutral)
SENTENCES: list[tuple[str, str]] = [
    # 3-3 -> 2-3 inside a word, across a merged pair, and in 3-3-3 words
    ("你好，今天天气很好。", "ni2 hao3 jin1 tian1 tian1 qi4 hen2 hao3"),
    ("你好吗？", "ni2 hao3 ma5"),
    ("这个展览馆很大。", "zhe4 ge5 zhan2 lan2 guan3 hen3 da4"),
    ("他买了一把雨伞。", "ta1 mai3 le5 yi4 ba3 yu2 san3"),
    ("老鼠跑得很快。", "lao2 shu3 pao3 de5 hen3 kuai4"),
    ("我们可以一起去。", "wo3 men5 ke2 yi3 yi4 qi3 qu4"),
    ("他每天早上洗脸。", "ta1 mei3 tian1 zao3 shang5 xi2 lian3"),
    ("我的手表找不到了。", "wo3 de5 shou2 biao3 zhao3 bu5 dao4 le5"),
    ("他买了2本书。", "ta1 mai3 le5 liang2 ben3 shu1"),
    ("他在动物园看到了老虎。", "ta1 zai4 dong4 wu4 yuan2 kan4 dao4 le5 lao2 hu3"),
    ("请你看一看这本书。", "qing2 ni3 kan4 yi5 kan4 zhe4 ben3 shu1"),
    ("孩子们都很喜欢唱歌。", "hai2 zi5 men5 dou1 hen2 xi3 huan5 chang4 ge1"),
    # 一: yi4 before tones 1-3, yi2 before 4 (and a neutral 个), yi5 inside A一A, yi1 as an ordinal
    ("他一天工作八个小时。", "ta1 yi4 tian1 gong1 zuo4 ba1 ge5 xiao3 shi2"),
    ("这是一个新问题。", "zhe4 shi4 yi2 ge5 xin1 wen4 ti2"),
    ("第一次来北京。", "di4 yi1 ci4 lai2 bei3 jing1"),
    ("他一句话也没说。", "ta1 yi2 ju4 hua4 ye3 mei2 shuo1"),
    ("一年有十二个月。", "yi4 nian2 you3 shi2 er4 ge5 yue4"),
    # 不: bu2 before 4, bu4 elsewhere, bu5 inside A不A and potential complements
    ("我不是老师。", "wo3 bu2 shi4 lao3 shi1"),
    ("你不去吗？", "ni3 bu2 qu4 ma5"),
    ("他今天不来了。", "ta1 jin1 tian1 bu4 lai2 le5"),
    ("这个菜不太辣。", "zhe4 ge5 cai4 bu2 tai4 la4"),
    ("说不定明天会下雨。", "shuo1 bu5 ding4 ming2 tian1 hui4 xia4 yu3"),
    ("对不起，我来晚了。", "dui4 bu5 qi3 wo3 lai2 wan3 le5"),
    ("这个办法行不行？", "zhe4 ge5 ban4 fa3 xing2 bu5 xing2"),
    # neutral tones: particles, suffixes, reduplicated kin terms and verbs, lexical neutral syllables
    ("他有一个杯子和两个盘子。", "ta1 you3 yi2 ge5 bei1 zi5 he2 liang3 ge5 pan2 zi5"),
    ("妈妈和爸爸都在家。", "ma1 ma5 he2 ba4 ba5 dou1 zai4 jia1"),
    ("哥哥的朋友是医生。", "ge1 ge5 de5 peng2 you5 shi4 yi1 sheng1"),
    ("我们已经吃饭了。", "wo3 men5 yi3 jing1 chi1 fan4 le5"),
    ("他慢慢地走进了教室。", "ta1 man4 man4 de5 zou3 jin4 le5 jiao4 shi4"),
    ("你看看这件衣服。", "ni3 kan4 kan5 zhe4 jian4 yi1 fu5"),
    ("我的东西丢了。", "wo3 de5 dong1 xi5 diu1 le5"),
    ("他是我的好朋友。", "ta1 shi4 wo3 de5 hao3 peng2 you5"),
    ("我们走吧。", "wo3 men5 zou3 ba5"),
    ("他们都到了。", "ta1 men5 dou1 dao4 le5"),
    ("首都北京很漂亮。", "shou3 du1 bei3 jing1 hen3 piao4 liang5"),
    ("我觉得这个主意不错。", "wo3 jue2 de5 zhe4 ge5 zhu3 yi5 bu2 cuo4"),
    # polyphones
    ("我去银行取钱。", "wo3 qu4 yin2 hang2 qu3 qian2"),
    ("他长大以后想当医生。", "ta1 zhang3 da4 yi3 hou4 xiang3 dang1 yi1 sheng1"),
    ("她的头发很长。", "ta1 de5 tou2 fa5 hen3 chang2"),
    ("我们重新开始吧。", "wo3 men5 chong2 xin1 kai1 shi3 ba5"),
    ("这件衣服很重。", "zhe4 jian4 yi1 fu5 hen3 zhong4"),
    ("他还没还我钱。", "ta1 hai2 mei2 huan2 wo3 qian2"),
    ("睡觉以前要刷牙。", "shui4 jiao4 yi3 qian2 yao4 shua1 ya2"),
    ("音乐让人快乐。", "yin1 yue4 rang4 ren2 kuai4 le4"),
    ("今天是3月5日。", "jin1 tian1 shi4 san1 yue4 wu3 ri4"),
]


def levenshtein(reference: list[str], hypothesis: list[str]) -> int:
    previous = list(range(len(hypothesis) + 1))
    for i, ref_item in enumerate(reference, start=1):
        current = [i] + [0] * len(hypothesis)
        for j, hyp_item in enumerate(hypothesis, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_item != hyp_item))
        previous = current
    return previous[-1]


def toneless(syllables: list[str]) -> list[str]:
    return [s.rstrip("12345") for s in syllables]


@dataclass(frozen=True)
class Errors:
    """Edit distances over `n` reference syllables: with tones, and with tones dropped."""

    n: int
    toned: int
    plain: int

    @property
    def tone_only(self) -> int:  # syllables right, tones wrong
        return self.toned - self.plain


def syllable_errors(reference: list[str], hypothesis: list[str]) -> Errors:
    return Errors(
        len(reference), levenshtein(reference, hypothesis), levenshtein(toneless(reference), toneless(hypothesis))
    )


def tone_confusions(reference: list[str], hypothesis: list[str]) -> Counter[tuple[str, str]]:
    """(reference tone, heard tone) for each syllable the recogniser got right without its tone."""
    matcher = difflib.SequenceMatcher(None, toneless(reference), toneless(hypothesis), autojunk=False)
    out: Counter[tuple[str, str]] = Counter()
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            out[reference[block.a + k][-1], hypothesis[block.b + k][-1]] += 1
    return out


def said(text: str) -> str:
    """The text as the worker hands it to the engine (numbers, dates ... spelled out)."""
    return normalize_for_speech(text, "zh")


def g2p_syllables(text: str, sandhi: bool = True) -> list[str]:
    """The syllables kokoro's zh G2P speaks for a script line."""
    from worker.engines.kokoro.g2p import ZhReadings

    return ZhReadings(sandhi).syllables(said(text))


def expected_phonemes(pinyin: str) -> str:
    from worker.engines.kokoro.g2p import pinyin_phonemes

    return pinyin_phonemes(pinyin)


def bare_phonemes(phonemes: str) -> str:
    """Phonemes less spaces and punctuation (word spacing is the G2P's own business)."""
    return "".join(ch for ch in phonemes if not ch.isspace() and not unicodedata.category(ch).startswith("P"))


def reader_pinyin(text: str) -> list[str]:
    """pypinyin's citation reading (tone3, neutral 5) of the Han characters in `text`: the same reader for the
    script and for a transcript, so only what the recogniser heard differently counts."""
    from pypinyin import Style, lazy_pinyin

    han = "".join(ch for ch in said(unicodedata.normalize("NFKC", text)) if "\u4e00" <= ch <= "\u9fff")
    return [str(s) for s in lazy_pinyin(han, style=Style.TONE3, neutral_tone_with_five=True)]


def g2p_report(sandhi: bool) -> tuple[Errors, int, list[str]]:
    """Summed G2P errors over the set, sentences whose phonemes are exactly as expected, and the misses."""
    from worker.engines.kokoro.g2p import Phonemizer

    phonemizer = Phonemizer(zh_sandhi=sandhi)
    total, exact, misses = Errors(0, 0, 0), 0, []
    for text, pinyin in SENTENCES:
        got = g2p_syllables(text, sandhi)
        errors = syllable_errors(pinyin.split(), got)
        total = Errors(total.n + errors.n, total.toned + errors.toned, total.plain + errors.plain)
        if bare_phonemes(phonemizer(said(text), "zh")) == bare_phonemes(expected_phonemes(pinyin)):
            exact += 1
        if errors.toned:
            misses.append(f"{text}  expected {pinyin}  got {' '.join(got)}")
    return total, exact, misses


@dataclass(frozen=True)
class Heard:
    text: str
    transcript: str
    cer: float
    errors: Errors
    confusions: Counter[tuple[str, str]]


def asr_scores(voice: str, sandhi: bool, limit: int | None = None) -> list[Heard]:
    """Each sentence synthesized by kokoro with `voice` and scored by Whisper base."""
    from tests.support.asr import error_rate, transcribe
    from worker.engines.kokoro.engine import KokoroEngine
    from worker.engines.kokoro.g2p import Phonemizer

    engine = KokoroEngine(warm_languages=("zh",))
    engine._phonemizer = Phonemizer(zh_sandhi=sandhi)  # the G2P under test; nothing else differs
    out = []
    for text, _ in SENTENCES[:limit]:
        spoken = said(text)
        result = engine.synthesize(spoken, voice=voice, language="zh")
        transcript = transcribe(result.audio, result.sample_rate, "zh")
        heard = said(transcript) if transcript.strip() else ""
        reference, hypothesis = reader_pinyin(spoken), reader_pinyin(heard)
        errors = syllable_errors(reference, hypothesis)
        confusions = tone_confusions(reference, hypothesis)
        out.append(Heard(text, transcript, error_rate(spoken, heard, "zh"), errors, confusions))
    return out


def rates(heard: list[Heard]) -> dict[str, float]:
    n = sum(h.errors.n for h in heard)
    return {
        "cer": statistics.fmean(h.cer for h in heard),
        "ter": sum(h.errors.toned for h in heard) / n,
        "ser": sum(h.errors.plain for h in heard) / n,
        "tone_only": sum(h.errors.tone_only for h in heard) / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voices", default="jm_kumo", help="stock voices, comma-separated")
    parser.add_argument("--g2p-only", action="store_true")
    parser.add_argument("--limit", type=int, default=None, help="first N sentences only (ASR part)")
    parser.add_argument("--verbose", action="store_true", help="print every transcript")
    args = parser.parse_args()
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f}")
    syllables = sum(len(p.split()) for _, p in SENTENCES)
    print(f"set: {len(SENTENCES)} sentences, {syllables} syllables")
    print("\nG2P against the expected pinyin            tone err  syllable err  exact phonemes")
    for sandhi in (False, True):
        total, exact, misses = g2p_report(sandhi)
        name = "after (sandhi, neutral tones)" if sandhi else "before (misaki v1.0 citation tones)"
        print(f"  {name:<40} {total.tone_only / total.n:7.1%}  {total.plain / total.n:11.1%}  {exact}/{len(SENTENCES)}")
        for miss in misses if sandhi else []:
            print(f"    miss: {miss}")
    if args.g2p_only:
        return
    print("\nASR (Whisper base) of kokoro's speech      CER    TER    SER   tone-only  wall s")
    for voice in args.voices.split(","):
        for sandhi in (False, True):
            started = time.perf_counter()
            heard = asr_scores(voice, sandhi, args.limit)
            r = rates(heard)
            name = f"{voice} {'after' if sandhi else 'before'}"
            print(
                f"  {name:<40} {r['cer']:5.1%} {r['ter']:5.1%} {r['ser']:5.1%}  {r['tone_only']:8.1%}"
                f"  {time.perf_counter() - started:6.0f}",
                flush=True,
            )
            confusions: Counter[tuple[str, str]] = sum((h.confusions for h in heard), Counter())
            per_tone = []
            for tone in "12345":
                heard_as = {b: n for (a, b), n in confusions.items() if a == tone}
                wrong = sum(n for b, n in heard_as.items() if b != tone)
                top = ", ".join(f"{b}:{n}" for b, n in sorted(heard_as.items()) if b != tone)
                per_tone.append(f"{tone}: {wrong}/{sum(heard_as.values())} wrong ({top or '-'})")
            print("    syllables heard right, tone by tone (script tone: misheard/all (heard as)):")
            print("      " + "; ".join(per_tone))
            for h in heard if args.verbose else []:
                print(f"    {h.text} -> {h.transcript}  cer {h.cer:.2f} tone-only {h.errors.tone_only}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
