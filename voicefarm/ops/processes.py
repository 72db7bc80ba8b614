"""Child processes and the services they run: a process starts in a session of its own that dies with its
parent, stops on a signal, then SIGKILL; a `Service` is a started server with its URL and how to stop it."""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"


class ServiceError(RuntimeError):
    """A service binary is missing or did not come up."""


@dataclass
class Service:
    name: str
    url: str
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    # Stopped by this command when set (PostgreSQL: `pg_ctl stop`, also after a `pg_ctl start` brought it back).
    stop_argv: list[str] | None = None
    cleanup_paths: list[Path] = field(default_factory=list)
    info: dict[str, str] = field(default_factory=dict)
    _stopped: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the service and remove its throwaway files; calling it again does nothing."""
        if self._stopped:
            return
        self._stopped = True
        if self.stop_argv is not None:
            subprocess.run(self.stop_argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout + 5)
        if self.process is not None:
            terminate(self.process, timeout)
        for path in self.cleanup_paths:
            shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _tail(path: Path | None, lines: int = 20) -> str:
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _parent_death_signal(signum: int) -> Callable[[], None]:
    # Runs in the child between fork and exec, after any change of user (a change of user clears it).
    def preexec() -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signum)  # PR_SET_PDEATHSIG

    return preexec


def spawn(
    argv: Sequence[str],
    env: dict[str, str] | None = None,
    log_path: Path | None = None,
    cwd: Path | None = None,
    *,
    death_signal: int = signal.SIGTERM,
    user: pwd.struct_passwd | None = None,
) -> subprocess.Popen[bytes]:
    """Start a child in its own session (so its whole process group can be signalled).

    The session shields it from a terminal's Ctrl-C, so teardown can stop children in order; `death_signal`
    (PR_SET_PDEATHSIG) reaches it when the thread that started it dies, so it never outlives a parent that was
    killed outright. `user` runs it as another OS user (root handing PostgreSQL to its own user).
    Output goes to log_path, or to our own stdout/stderr when log_path is None.
    """
    log = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")  # the child gets its own copy of the descriptor; ours closes below
    switch = user is not None and user.pw_uid != os.geteuid()
    try:
        return subprocess.Popen(
            list(argv),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
            start_new_session=True,
            preexec_fn=_parent_death_signal(death_signal) if sys.platform.startswith("linux") else None,
            user=user.pw_uid if switch and user is not None else None,
            group=user.pw_gid if switch and user is not None else None,
            extra_groups=[] if switch else None,
        )
    finally:
        if log is not None:
            log.close()


def terminate(
    proc: subprocess.Popen[bytes], timeout: float = 15.0, sig: int = signal.SIGTERM, group: bool = True
) -> int | None:
    """Send `sig` to the child's process group (or to the child alone), SIGKILL the group after timeout;
    return its exit code."""
    if proc.poll() is not None:
        return proc.returncode
    send(proc, sig, group)
    return reap(proc, timeout)


def send(proc: subprocess.Popen[bytes], sig: int, group: bool = True) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)


def reap(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """Wait up to timeout for a child that was asked to stop, then SIGKILL its group; return its exit code."""
    try:
        return proc.wait(max(timeout, 0.0))
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        return proc.wait(5)


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def wait_until(check: Callable[[], bool], timeout: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.05)
    return check()
