"""The reaper: what makes a supervisor's whole process tree die with it, however it dies.

Every child a `Supervisor` starts carries a marker in its environment, `_VOICEFARM_TREE_<token>=1`, and so does
everything that child starts in turn (Celery pool processes, gunicorn workers, the Celery processes of a nested
`voicefarm worker`), because environments are inherited. The supervisor also starts one small reaper process
and keeps the write end of a pipe to it. When the supervisor exits, cleanly or by SIGKILL, the kernel closes that
pipe; the reaper then SIGKILLs every process that still carries the marker, sweeping until none is left, and
exits. After a clean stop it finds nothing: it is the last line, not the usual way things stop.

Processes that must stop cleanly when the supervisor is killed (PostgreSQL, Redis) are started unmarked, with a
parent-death signal they handle themselves (see `services.spawn`). The reaper carries no marker of its own.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

MARKER_PREFIX = "_VOICEFARM_TREE_"


def new_token() -> str:
    return secrets.token_hex(8)


def marker(token: str) -> str:
    """The environment variable that marks a process as part of the tree of `token`."""
    return f"{MARKER_PREFIX}{token}"


def marked(token: str) -> list[int]:
    """Live processes whose environment carries the marker of `token` (not this process)."""
    needle = f"{marker(token)}=1\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        # A zombie's environment reads empty, so the dead are never matched.
        if environ.startswith(needle) or b"\0" + needle in environ:
            found.append(int(entry.name))
    return found


def sweep(token: str, timeout: float = 5.0) -> list[int]:
    """SIGKILL every marked process until none is left (or timeout); returns the pids it killed."""
    killed: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = marked(token)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        time.sleep(0.05)
    return killed


def start(token: str) -> subprocess.Popen[bytes]:
    """Start the reaper of `token`; it acts when the returned process's stdin closes."""
    # Unmarked (no tree's sweep kills a reaper before it has swept), in its own session (a terminal's Ctrl-C
    # does not reach it), and not dying with its parent: outliving it is the point.
    from shared.config import environment

    env = {name: value for name, value in environment().items() if not name.startswith(MARKER_PREFIX)}
    return subprocess.Popen(
        [sys.executable, "-m", "voicefarm.ops.reaper", token],
        stdin=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )


def main(argv: list[str]) -> int:
    token = argv[0]
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        while sys.stdin.buffer.read(4096):
            pass
    killed = sweep(token)
    if killed:
        print(f"voicefarm reaper: killed {len(killed)} process(es) left behind: {sorted(set(killed))}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
