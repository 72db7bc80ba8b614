"""The lexicon snapshot at submit (shared/text/lexicon.py `attach`): the per-term matching it had before against
the Aho–Corasick matcher, in one run, on the same entries and lines.

The "before" code is the module as it was at BASELINE_REV (read with `git show`, loaded under another name); both
read the tenant's entries from the same SQLite database in memory and snapshot the same rows, and the script
checks that both give the same snapshots. Sizes: tenant entries x batch lines; half the entries are English
words (matched whole-word, case-insensitively), half Chinese terms (as written); half the lines are English, half
Chinese, each about 100 characters with a few entries' terms in it.

    .venv/bin/python benchmarks/lexicon_attach.py                 # 1,000 x 1,000 and 10,000 x 10,000
    .venv/bin/python benchmarks/lexicon_attach.py --sizes 1000x1000 --skip-before-over 2000000
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, insert  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from shared.models import Base, LexiconEntry, Tenant  # noqa: E402
from shared.text import lexicon  # noqa: E402

# The last commit with the per-term matching (`occurs` for every entry and every line).
BASELINE_REV = "f7317fb"
CJK = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
SYLLABLES = ["ka", "lo", "mi", "zor", "blat", "ten", "vor", "qui", "nex", "dra", "phe", "lum", "sar", "tu", "wen"]
FILLER_EN = "the of and a to in is you that it he was for on are as with his they at be this have from".split()


def load_before(rev: str) -> types.ModuleType:
    source = subprocess.run(
        ["git", "show", f"{rev}:shared/text/lexicon.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    module = types.ModuleType("lexicon_before")
    module.__file__ = f"<{rev}:shared/text/lexicon.py>"
    sys.modules["lexicon_before"] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def make_entries(rng: random.Random, count: int) -> list[dict[str, str]]:
    entries, seen = [], set()
    while len(entries) < count:
        if len(entries) % 2 == 0:
            term = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))).capitalize()
            language, alphabet, reading = "en", "arpabet", "K AA1 L OW0"
        else:
            term = "".join(rng.choice(CJK) for _ in range(rng.randint(2, 4)))
            language, alphabet, reading = "zh", "pinyin", " ".join("ma1" for _ in term)
        if (language, term) not in seen:
            seen.add((language, term))
            entries.append({"term": term, "language": language, "pronunciation": reading, "alphabet": alphabet})
    return entries


def make_lines(rng: random.Random, count: int, entries: list[dict[str, str]]) -> list[dict[str, Any]]:
    en = [e["term"] for e in entries if e["language"] == "en"]
    zh = [e["term"] for e in entries if e["language"] == "zh"]
    lines = []
    for i in range(count):
        if i % 2 == 0:
            words = [rng.choice(FILLER_EN) for _ in range(18)]
            for _ in range(2):
                words[rng.randrange(len(words))] = rng.choice(en).lower() if rng.random() < 0.5 else rng.choice(en)
            text, language = " ".join(words).capitalize() + ".", "en"
        else:
            chars = [rng.choice(CJK) for _ in range(90)]
            for _ in range(2):
                at = rng.randrange(len(chars))
                chars[at : at + 1] = list(rng.choice(zh))
            text, language = "".join(chars) + "。", "zh"
        lines.append({"text": text, "language": language, "options": None})
    return lines


def database(entries: list[dict[str, str]]) -> tuple[Session, str]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    session = Session(engine)
    tenant = Tenant(name="bench")
    session.add(tenant)
    session.flush()
    session.execute(insert(LexiconEntry), [{"tenant_id": tenant.id, **entry} for entry in entries])
    session.commit()
    return session, tenant.id


def timed(module: Any, session: Session, tenant_id: str, lines: list[dict[str, Any]]) -> tuple[float, list[Any]]:
    rows = copy.deepcopy(lines)
    started = time.perf_counter()
    module.attach(session, tenant_id, rows)
    return time.perf_counter() - started, [row["options"] for row in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000x1000,10000x10000", help="entries x lines, comma-separated")
    parser.add_argument("--baseline-rev", default=BASELINE_REV)
    parser.add_argument(
        "--skip-before-over", type=int, default=0, help="skip the before code above this many entries x lines"
    )
    args = parser.parse_args()
    before = load_before(args.baseline_rev)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f}")
    print(f"before: shared/text/lexicon.py at {args.baseline_rev}; after: the working tree")
    print(f"{'entries':>8} {'lines':>7} {'before s':>10} {'after s':>9} {'speed-up':>9} {'snapshots':>10}  same")
    for size in args.sizes.split(","):
        count, line_count = (int(n) for n in size.lower().split("x"))
        rng = random.Random(count * 7919 + line_count)
        entries = make_entries(rng, count)
        lines = make_lines(rng, line_count, entries)
        session, tenant_id = database(entries)
        after_s, after = timed(lexicon, session, tenant_id, lines)
        snapshots = sum(1 for options in after if options)
        if args.skip_before_over and count * line_count > args.skip_before_over:
            print(f"{count:>8} {line_count:>7} {'skipped':>10} {after_s:>9.3f} {'':>9} {snapshots:>10}")
            continue
        before_s, expected = timed(before, session, tenant_id, lines)
        same = "yes" if expected == after else "NO"
        print(
            f"{count:>8} {line_count:>7} {before_s:>10.3f} {after_s:>9.3f} {before_s / after_s:>8.0f}x "
            f"{snapshots:>10}  {same}"
        )
        session.close()
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
