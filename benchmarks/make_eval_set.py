"""Build the evaluation set `voicefarm eval` runs: reference speakers spoken by espeak-ng, lines for the farm to say.

    .venv/bin/python benchmarks/make_eval_set.py --out var/eval-set [--speakers 4] [--lines 3] [--languages en,zh,ja]

Each speaker is an espeak-ng voice variant at its own pitch (the library and data the `espeakng-loader` wheel ships,
driven through ctypes as worker/engines/kokoro/espeak.py does). Every speaker gets two clips of different text:
`clone.wav`, which the farm clones the voice from, and `heldout.wav`, which only the scoring uses, so similarity is
measured against speech the voice was not fitted to. `set.jsonl` holds the lines (id, text, language, speaker);
lines are handed to the language's speakers in turn. The audio is made here at run time (about 6 MB for the full
set), not kept in git; benchmarks/eval_set/README.md says where each part comes from and under which licence.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_PITCH = 3  # espeak_PARAMETER: espeakPITCH (0-100, 50 normal)
_RATE = 1  # espeakRATE, words per minute
SET_README = Path(__file__).with_name("eval_set") / "README.md"


@dataclass(frozen=True)
class Speaker:
    name: str
    language: str
    voice: str  # espeak-ng voice name with a variant
    pitch: int
    rate: int


SPEAKERS = (
    Speaker("en_m3", "en", "en-us+m3", 40, 165),
    Speaker("en_f3", "en", "en-gb-x-rp+f3", 62, 160),
    Speaker("en_m6", "en", "en-us+m6", 30, 150),
    Speaker("en_f4", "en", "en-us+f4", 72, 170),
    Speaker("zh_f2", "zh", "cmn+f2", 60, 150),
    Speaker("zh_m1", "zh", "cmn+m1", 40, 145),
    Speaker("zh_f5", "zh", "cmn+f5", 70, 155),
    Speaker("zh_m4", "zh", "cmn+m4", 32, 140),
    Speaker("ja_m1", "ja", "ja+m1", 42, 150),
    Speaker("ja_f2", "ja", "ja+f2", 64, 145),
    Speaker("ja_m7", "ja", "ja+m7", 34, 140),
    Speaker("ja_f1", "ja", "ja+f1", 74, 155),
)

# Texts written for this set. espeak-ng reads Japanese kana only, so the Japanese clips are in kana; the farm's
# lines are ordinary text.
CLIPS = {
    "en": (
        "Every morning I walk to the station, buy a paper, and read the weather report while the train is late.",
        "My brother keeps bees behind his house, and each summer he gives the whole street a jar of honey.",
    ),
    "zh": (
        "每天早上我先去公园跑步，然后回家吃早饭，再坐地铁去公司上班。",
        "我的朋友住在海边，每到夏天他都会请我们去他家里吃新鲜的鱼。",
    ),
    "ja": (
        "まいあさ わたしは えきまで あるいて、でんしゃの なかで しんぶんを よみます。",
        "あにの いえの うらには はたけが あって、なつには トマトが たくさん とれます。",
    ),
}
LINES = {
    "en": (
        "The library opens at nine and closes early on Sundays.",
        "Please put the blue box on the top shelf.",
        "We missed the last bus, so we walked home in the rain.",
        "She painted the kitchen a bright shade of yellow.",
        "Turn left at the bakery and the museum is on your right.",
    ),
    "zh": (
        "图书馆早上九点开门，星期天关得早。",
        "请把这个蓝色的盒子放在最上面的架子上。",
        "我们错过了最后一班车，只好冒雨走回家。",
        "她把厨房刷成了明亮的黄色。",
        "在面包店左转，博物馆就在你的右边。",
    ),
    "ja": (
        "図書館は九時に開いて、日曜日は早く閉まります。",
        "青い箱を一番上の棚に置いてください。",
        "最終バスに乗り遅れたので、雨の中を歩いて帰りました。",
        "彼女は台所を明るい黄色に塗りました。",
        "パン屋の角を左に曲がると、右側に博物館があります。",
    ),
}


class Espeak:
    """espeak-ng's synthesizer through ctypes: `speak(text, voice, pitch, rate)` -> (int16 samples, rate)."""

    _CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

    def __init__(self) -> None:
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        self.rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
        if self.rate <= 0:
            raise RuntimeError("espeak-ng failed to initialise from the espeakng-loader data")
        self._chunks: list[np.ndarray] = []
        self._callback = self._CALLBACK(self._collect)  # kept referenced: espeak calls it later
        lib.espeak_SetSynthCallback(self._callback)
        self.lib = lib

    def _collect(self, wav: ctypes._Pointer[ctypes.c_short], count: int, _events: int) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (count,)).copy())
        return 0

    def speak(self, text: str, voice: str, pitch: int, rate: int) -> np.ndarray:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(_PITCH, pitch, 0)
        self.lib.espeak_SetParameter(_RATE, rate, 0)
        self._chunks = []
        data = text.encode()
        self.lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, _CHARS_UTF8, None, None)
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


def build(out: Path, *, speakers: int = 4, lines: int = 3, languages: tuple[str, ...] = ("en", "zh", "ja")) -> Path:
    """Write the set to `out` (speakers per language, lines per speaker) and return the path of its set.jsonl."""
    import soundfile as sf

    engine = Espeak()
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for language in languages:
        chosen = [s for s in SPEAKERS if s.language == language][:speakers]
        texts = LINES[language]
        for index, speaker in enumerate(chosen):
            name = speaker.name
            folder = out / "speakers" / speaker.name
            folder.mkdir(parents=True, exist_ok=True)
            for clip, text in zip(("clone", "heldout"), CLIPS[language], strict=True):
                audio = engine.speak(text, speaker.voice, speaker.pitch, speaker.rate)
                sf.write(folder / f"{clip}.wav", audio, engine.rate, subtype="PCM_16")
                (folder / f"{clip}.txt").write_text(text + "\n")
            (folder / "speaker.json").write_text(json.dumps({"language": language, "espeak": speaker.__dict__}) + "\n")
            for n in range(lines):
                text = texts[(index + n) % len(texts)]
                rows.append({"id": f"{speaker.name}-{n + 1}", "text": text, "language": language, "speaker": name})
    path = out / "set.jsonl"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    shutil.copyfile(SET_README, out / "README.md")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("var/eval-set"))
    parser.add_argument("--speakers", type=int, default=4, help="speakers per language (at most 4)")
    parser.add_argument("--lines", type=int, default=3, help="lines per speaker (at most 5)")
    parser.add_argument("--languages", default="en,zh,ja")
    args = parser.parse_args()
    path = build(args.out, speakers=args.speakers, lines=args.lines, languages=tuple(args.languages.split(",")))
    print(f"{path}: {sum(1 for _ in path.open())} lines")


if __name__ == "__main__":
    main()
