"""The `kokoro` engine's catalogue: Kokoro-82M int8 ONNX on CPU (worker/engines/kokoro/)."""

from __future__ import annotations

NAME = "kokoro"
LANGUAGES = ("zh", "en", "ja")
MODES = ("clone", "cross_lingual", "instruct")
SAMPLE_RATE = 24_000
MAX_SEGMENT_CHARS = 200
MIN_SPEED, MAX_SPEED = 0.5, 2.0
STOCK_VOICES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
# All five packs are Japanese speakers. Defaults by Whisper round trip over 5 sentences per language and voice:
# en: jf_alpha, jf_tebukuro and jm_kumo tie (WER 0.02, only "nine" heard as "9"); ja: all 0.09-0.12 CER, mostly
# kana/kanji spelling, so jf_alpha (upstream's best-graded Japanese voice); zh: jm_kumo reads Mandarin clearly
# best (CER 0.05 vs 0.13-0.17 for the female voices).
DEFAULT_VOICES = {"ja": "jf_alpha", "zh": "jm_kumo", "en": "jf_alpha"}
# Kokoro honours speaking speed and nothing else; these are the words it reads as speed.
HONOURED = ("slow", "fast", "慢", "快", "ゆっくり", "速く")
INSTRUCTIONS: list[dict[str, str]] = [
    {"id": "slow", "label": "Slowly", "text": "Speak slowly.", "kind": "speed"},
    {"id": "fast", "label": "Fast", "text": "Speak fast.", "kind": "speed"},
    {"id": "slow-zh", "label": "慢一点", "text": "请慢一点说。", "kind": "speed"},
    {"id": "fast-zh", "label": "快一点", "text": "请快一点说。", "kind": "speed"},
    {"id": "slow-ja", "label": "ゆっくり", "text": "ゆっくり話して。", "kind": "speed"},
    {"id": "fast-ja", "label": "速く", "text": "速く話して。", "kind": "speed"},
]
