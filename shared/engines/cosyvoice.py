"""The `cosyvoice` engine's catalogue: upstream CosyVoice2 / Fun-CosyVoice3 (worker/engines/cosyvoice.py).

Its instruct catalogue is the one upstream trained CosyVoice3 on: 17 dialects, volume, speed, emotion and styles.
"""

from __future__ import annotations

NAME = "cosyvoice"
SAMPLE_RATE = 24000
MAX_SEGMENT_CHARS = 200  # deployment guides cap one request at 200 characters
MODES = ("clone", "cross_lingual", "instruct")
# The languages upstream documents per generation ("yue" is Cantonese).
LANGUAGES = {3: ("zh", "en", "ja", "ko", "yue", "de", "es", "fr", "it", "ru"), 2: ("zh", "en", "ja", "ko", "yue")}
MIN_SPEED, MAX_SPEED = 0.5, 2.0
_DIALECTS = (
    "cantonese Cantonese 广东", "northeastern Northeastern 东北", "gansu Gansu 甘肃", "guizhou Guizhou 贵州",
    "henan Henan 河南", "hubei Hubei 湖北", "hunan Hunan 湖南", "jiangxi Jiangxi 江西", "minnan Minnan 闽南",
    "ningxia Ningxia 宁夏", "shanxi Shanxi 山西", "shaanxi Shaanxi 陕西", "shandong Shandong 山东",
    "shanghai Shanghainese 上海", "sichuan Sichuan 四川", "tianjin Tianjin 天津", "yunnan Yunnan 云南",
)  # fmt: skip
_STYLES = (
    ("loud", "volume", "As loudly as possible", "Please say a sentence as loudly as possible."),
    ("soft", "volume", "In a very soft voice", "Please say a sentence in a very soft voice."),
    ("slow", "speed", "As slowly as possible", "请用尽可能慢地语速说一句话。"),
    ("fast", "speed", "As fast as possible", "请用尽可能快地语速说一句话。"),
    ("happy", "emotion", "Very happily", "请非常开心地说一句话。"),
    ("sad", "emotion", "Very sadly", "请非常伤心地说一句话。"),
    ("angry", "emotion", "Very angrily", "请非常生气地说一句话。"),
    ("cartoon-pig", "style", "Cartoon pig (Peppa Pig) style", "我想体验一下小猪佩奇风格，可以吗？"),
    ("robot", "style", "Robot style", "你可以尝试用机器人的方式解答吗？"),
)
# The instruct catalogue upstream trained CosyVoice3 on; `text` is what a client sends as `instruct`.
INSTRUCTIONS: list[dict[str, str]] = [
    {"id": f"dialect-{key}", "label": f"{label} dialect", "text": f"请用{zh}话表达。", "kind": "dialect"}
    for key, label, zh in (row.split() for row in _DIALECTS)
] + [{"id": key, "label": label, "text": text, "kind": kind} for key, kind, label, text in _STYLES]
