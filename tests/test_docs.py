"""The documentation tree: generated references current, every relative link resolving, every page reachable.

README.md is the front door (short); docs/index.md and the pages under docs/ hold the rest. A link is checked to
its file and, with `#anchor`, to a heading of that file (GitHub's anchors: lowercase, punctuation dropped, spaces
as hyphens, `-1`, `-2` for repeats).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import deque
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
README_MAX_LINES = 220

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")


def pages() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def prose_lines(path: Path) -> list[str]:
    """The lines of a Markdown file outside fenced code blocks."""
    lines, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(path):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return frozenset(found)


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every relative link in the file's prose."""
    found = []
    lines, fenced = path.read_text(encoding="utf-8").splitlines(), False
    for number, line in enumerate(lines, 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            target = match.group(1)
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("//"):
                continue  # http:, https:, mailto: ...
            found.append((number, target))
    return found


def resolve(page: Path, target: str) -> tuple[Path, str | None]:
    file_part, _, anchor = target.partition("#")
    resolved = (page.parent / file_part).resolve() if file_part else page
    return resolved, (anchor or None)


def test_the_generated_references_are_current() -> None:
    done = subprocess.run(
        [sys.executable, "docs/generate.py", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"docs/generate.py --check failed:\n{done.stdout}{done.stderr}"


def test_every_relative_link_resolves() -> None:
    broken = []
    for page in pages():
        for number, target in links(page):
            resolved, anchor = resolve(page, target)
            where = f"{page.relative_to(ROOT)}:{number}: {target}"
            if not resolved.exists():
                broken.append(f"{where} (no such file)")
            elif anchor is not None:
                if resolved.suffix != ".md" or resolved.is_dir():
                    broken.append(f"{where} (an anchor into a file that is not Markdown)")
                elif anchor not in anchors(resolved):
                    broken.append(f"{where} (no heading with that anchor)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_readme_is_short_and_reaches_every_page() -> None:
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; the front door stays under {README_MAX_LINES}"
    reached, todo = {README.resolve()}, deque([README.resolve()])
    while todo:
        page = todo.popleft()
        for _, target in links(page):
            resolved, _ = resolve(page, target)
            if resolved.suffix == ".md" and resolved.is_file() and resolved not in reached:
                reached.add(resolved)
                todo.append(resolved)
    unreachable = [str(p.relative_to(ROOT)) for p in sorted(DOCS.rglob("*.md")) if p.resolve() not in reached]
    assert not unreachable, "pages no link path from README.md reaches:\n" + "\n".join(unreachable)


def test_the_link_checker_reads_anchors_as_github_does() -> None:
    assert slug("kokoro (embedded default, CPU)") == "kokoro-embedded-default-cpu"
    assert slug("The QA gate: every take, bad ones re-taken") == "the-qa-gate-every-take-bad-ones-re-taken"
    assert slug("4. Start GPU workers") == "4-start-gpu-workers"
    assert slug("`voicefarm worker`") == "voicefarm-worker"
    assert slug("3b. Post-production per job") == "3b-post-production-per-job"
