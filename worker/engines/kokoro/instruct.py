"""Natural-language instructions for the kokoro engine: it can honour speaking speed and nothing else.

An instruction such as "speak slowly", "请快一点说" or "ゆっくり話して" becomes a speed factor. Whatever else an
instruction asks for (a dialect, an emotion, loudness, a character voice) is left over after the speed words and
filler are removed; any such remainder is reported as a plain-sentence warning, never silently dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from shared.engines.kokoro import HONOURED as HONOURED  # the catalogue advertised in `Capabilities.instructions`

SLOW_FACTOR = 0.8
FAST_FACTOR = 1.25
STRONG_SLOW_FACTOR = 0.67
STRONG_FAST_FACTOR = 1.5

# CosyVoice-style wrapping that clients may copy verbatim into the instruction.
_WRAPPING = re.compile(r"you are a helpful assistant\.?|<\|endofprompt\|>", re.IGNORECASE)
# Words containing 快/慢 that are not about speed (happy, pleasant, arrogant, ...).
_NOT_SPEED = re.compile(r"快乐|愉快|快活|欢快|痛快|爽快|傲慢|怠慢|快適")
_SLOW = re.compile(r"\bslow(?:ly|er)?\b|\bleisurely\b|慢速|慢慢|慢|ゆっくり|のんびり", re.IGNORECASE)
_FAST = re.compile(
    r"\bfast(?:er)?\b|\bquick(?:ly|er)?\b|\brapid(?:ly)?\b|\bhurried(?:ly)?\b|快速|快|速く|早く|早口|急いで",
    re.IGNORECASE,
)
_STRONG = re.compile(
    r"\bvery\b|\bmuch\b|\breally\b|\bextremely\b|尽可能|非常|特别|极|很|とても|かなり|すごく", re.IGNORECASE
)
_EN_FILLER = re.compile(
    r"\b(?:please|speak|speaking|say|saying|talk|talking|read|reading|it|this|that|the|a|an|sentence|line|"
    r"text|words?|in|at|with|and|bit|little|lot|more|much|very|really|extremely|rather|somewhat|slightly|"
    r"quite|pace|speed|rate|tempo|voice|tone|manner|way|of|than|usual|normal|to|me|out|can|you|could|would)\b",
    re.IGNORECASE,
)
_CJK_FILLER = re.compile(
    r"这句话|这段话|一句话|句话|一点儿|一点|一些|点儿|语速|速度|节奏|稍微|比较|非常|特别|尽可能|尽量|一下|"
    r"可以|朗读|请|用|以|说|讲|读|念|话|点|些|的|地|得|很|更|再|来|吧|把|这|你|能|儿|极|"
    r"お願いします|ください|下さい|話して|話し|話す|読んで|読み|読む|言って|もっと|少し|ちょっと|とても|"
    r"かなり|すごく|して|で|に|と|を|は"
)
_PUNCTUATION = re.compile(r"[\s\W_]+", re.UNICODE)


@dataclass(frozen=True)
class Instruction:
    """What an instruction turned into: a speed factor and the warnings for whatever could not be honoured."""

    speed_factor: float = 1.0
    honoured: tuple[str, ...] = ()
    warnings: list[str] = field(default_factory=list)


def parse_instruction(instruct: str | None) -> Instruction:
    if instruct is None or not instruct.strip():
        return Instruction()
    text = _WRAPPING.sub(" ", instruct).strip()
    masked = _NOT_SPEED.sub(" notspeed ", text)  # keep them as leftover content, out of reach of the speed words
    slow = bool(_SLOW.search(masked))
    fast = bool(_FAST.search(masked))
    strong = bool(_STRONG.search(masked))
    leftover = _SLOW.sub(" ", masked)
    leftover = _FAST.sub(" ", leftover)
    leftover = _EN_FILLER.sub(" ", leftover)
    leftover = _CJK_FILLER.sub("", leftover)
    leftover = _PUNCTUATION.sub("", leftover)

    warnings: list[str] = []
    factor = 1.0
    honoured: tuple[str, ...] = ()
    if slow and fast:
        warnings.append(
            f"The instruction {instruct.strip()!r} asks to speak both slower and faster; the speaking speed "
            "was left unchanged."
        )
    elif slow:
        factor = STRONG_SLOW_FACTOR if strong else SLOW_FACTOR
        honoured = ("slow",)
    elif fast:
        factor = STRONG_FAST_FACTOR if strong else FAST_FACTOR
        honoured = ("fast",)
    if leftover:
        applied = f" Only the speaking speed ({honoured[0]}) was applied." if honoured else ""
        warnings.append(
            f"The kokoro engine cannot follow the instruction {instruct.strip()!r}: it can only change the "
            "speaking speed (slow or fast); dialects, emotions, loudness and character styles are not supported, "
            f"so the text was spoken in the voice's normal style.{applied}"
        )
    return Instruction(speed_factor=factor, honoured=honoured, warnings=warnings)
