"""Text normalisation per line: what `normalize_for_speech` costs beside the synthesis it comes before.

Times the first pass over the lines per language (it loads e2k's katakana models for Japanese), then each
line of a set of short-video lines full of numbers, money, dates, units and Latin words, and one 5,000-character
script per language (the longest text a job takes).

    .venv/bin/python benchmarks/normalization.py
    .venv/bin/python benchmarks/normalization.py --repeat 50
"""

from __future__ import annotations

import argparse
import statistics
import time

LINES = {
    "en": [
        "It costs $3.50 today, or $1.2 million for the whole lot.",
        "The train leaves at 10:30 on 2024-01-05 from platform 3.",
        "Growth was 12.5% in the 1990s and -3% in 2001.",
        "Call 555-123-4567 before the 21st, and bring 2.5 kg of rice.",
        "It was -3°C and the wind blew at 100 km/h.",
    ],
    "zh": [
        "今天是2024年1月5日，会议在10:30开始。",
        "价格是¥3.50，比去年增长了12.5%。",
        "气温-3℃，请拨打13812345678。",
        "我买了2个苹果和2.5kg大米，花了$100。",
        "我们用AI和ChatGPT做了3-5个视频。",
    ],
    "ja": [
        "2024年1月5日の10:30に会議があります。",
        "円周率は3.14で、割合は12.5%です。",
        "気温は-3℃、電話は03-1234-5678です。",
        "AIとChatGPTでmeetingの資料を作ります。",
        "5kmを走って、2.5kgのお米を買いました。",
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="passes over the lines (default 20)")
    args = parser.parse_args()
    started = time.perf_counter()
    from shared.text.normalization import normalize_for_speech

    print(f"import                {1000 * (time.perf_counter() - started):9.1f} ms")
    print(f"{'language':10} {'first pass ms':>14} {'median ms/line':>15} {'max ms/line':>12} {'5,000 chars ms':>15}")
    for language, lines in LINES.items():
        started = time.perf_counter()
        for line in lines:
            normalize_for_speech(line, language)
        first = 1000 * (time.perf_counter() - started)
        times = []
        for _ in range(args.repeat):
            for line in lines:
                started = time.perf_counter()
                normalize_for_speech(line, language)
                times.append(1000 * (time.perf_counter() - started))
        script = (" " if language == "en" else "").join(lines * 200)[:5000]
        started = time.perf_counter()
        normalize_for_speech(script, language)
        long_ms = 1000 * (time.perf_counter() - started)
        print(f"{language:10} {first:14.1f} {statistics.median(times):15.2f} {max(times):12.2f} {long_ms:15.1f}")


if __name__ == "__main__":
    main()
