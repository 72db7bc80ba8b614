"""A process whose wall clock is wrong: tests/support/clockshim.c, built here with the machine's C compiler and
LD_PRELOADed with VOICEFARM_TEST_CLOCK_OFFSET_S (why not Debian's faketime: the C file says)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.support.needs import missing

SOURCE = Path(__file__).resolve().parent / "clockshim.c"


def build_shim(directory: Path) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        missing("a C compiler (cc) to build tests/support/clockshim.c")
    library = directory / "clockshim.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(library), str(SOURCE), "-ldl"], check=True)
    return library


def skewed(shim: Path, offset_s: int) -> dict[str, str]:
    """Environment settings that move a process's wall clock (and its children's) by `offset_s`."""
    return {"LD_PRELOAD": str(shim), "VOICEFARM_TEST_CLOCK_OFFSET_S": str(offset_s)}
