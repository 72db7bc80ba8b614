"""worker/niceness.py: the autogroup's nice value is raised, never lowered, and a refusal is retried."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from tests.support import needs
from worker import niceness


def test_the_autogroup_is_raised_and_never_lowered(tmp_path: Path) -> None:
    group = tmp_path / "autogroup"
    group.write_text("/autogroup-85 nice 0\n")
    assert niceness.raise_autogroup(10, group) and niceness.autogroup_nice(group) == 10
    group.write_text("/autogroup-85 nice 15\n")
    assert niceness.raise_autogroup(10, group) and niceness.autogroup_nice(group) == 15


def test_no_autogroups_means_nothing_to_raise(tmp_path: Path) -> None:
    assert not niceness.raise_autogroup(10, tmp_path / "absent")


def test_the_kernels_rate_limit_is_waited_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    group = tmp_path / "autogroup"
    group.write_text("/autogroup-85 nice 0\n")
    refusals = iter([True, True, False])
    real_write = Path.write_text

    def write(self: Path, data: str, *args: object, **kwargs: object) -> int:
        if next(refusals):
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_text", write)
    monkeypatch.setattr(niceness.time, "sleep", lambda _s: None)
    assert niceness.raise_autogroup(10, group) and niceness.autogroup_nice(group) == 10


def test_a_session_leader_raises_its_own_group(tmp_path: Path) -> None:
    import subprocess
    import sys

    if not Path("/proc/self/autogroup").exists():
        needs.missing("the kernel has no scheduler autogroups (/proc/self/autogroup)")
    code = (
        "from worker.niceness import run_below_the_api, autogroup_nice; run_below_the_api(7); print(autogroup_nice())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, start_new_session=True, check=True
    )
    assert out.stdout.strip() == "7", out.stderr
    mine = niceness.autogroup_nice()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(mine), out.stderr  # not its session's leader: the shell's group is left alone
