"""Process supervision: start children in order, restart any that dies, stop them all and leave none behind.

`voicefarm up` (voicefarm/ops/farm.py) and `voicefarm worker` (voicefarm/ops/workers.py) are built on it.

Stopping goes layer by layer, the highest first and each layer's children together: a child gets its stop signal
(to its process group, or to itself alone when it stops its own children), optionally a firmer second signal
after a while (Celery: warm shutdown, then cold), and SIGKILL with its group when its stop timeout is up.
If the supervisor itself is killed outright, every child gets a parent-death signal (SIGKILL, or a clean stop
signal for services that must shut down cleanly), and the reaper (voicefarm/ops/reaper.py) SIGKILLs whatever of the
tree is left, however deep and in whatever session.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voicefarm.ops import reaper, services

if TYPE_CHECKING:
    import pwd

log = logging.getLogger("voicefarm.ops.supervisor")


@dataclass
class ChildSpec:
    name: str
    argv: list[str]
    env: dict[str, str] | None = None  # None: ours
    # Start-up waits for this before starting the next child (services must answer before the farm starts).
    ready: Callable[[], bool] | None = None
    ready_timeout: float = 60.0
    log_path: Path | None = None  # None: the child writes to our terminal
    # Stopping: higher layers stop first (farm processes before the services they use), a layer's children
    # together. The signal goes to the child's process group, or to the child alone when it stops its own
    # children (a Celery worker, PostgreSQL); after stop_timeout (None: the supervisor's) the group is SIGKILLed.
    layer: int = 0
    stop_signal: int = signal.SIGTERM
    signal_group: bool = True
    stop_timeout: float | None = None
    # (seconds, signal): a second, firmer request to a child still running that long after the first.
    stop_escalation: tuple[float, int] | None = None
    # When the supervisor dies outright: the child's parent-death signal, and whether the reaper kills what is
    # left of the child's tree (not for services that must stop cleanly and stop their own children).
    death_signal: int = signal.SIGKILL
    reaped: bool = True
    user: pwd.struct_passwd | None = None  # run as this OS user (PostgreSQL under root)


@dataclass
class _Child:
    spec: ChildSpec
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    next_start: float = 0.0
    failures: int = 0
    restarts: int = 0


class Supervisor:
    """Starts children in order, restarts any that die, stops them all (layer by layer) and leaves none behind."""

    def __init__(
        self,
        *,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        stable_after: float = 30.0,
        stop_timeout: float = 20.0,
        poll_interval: float = 0.2,
    ) -> None:
        self.backoff_initial, self.backoff_max, self.stable_after = backoff_initial, backoff_max, stable_after
        self.stop_timeout, self.poll_interval = stop_timeout, poll_interval
        self._children: list[_Child] = []
        # A plain flag, not a threading.Event: setting an Event from a signal handler can deadlock.
        self._stopping = False
        self._token = reaper.new_token()
        self._reaper: subprocess.Popen[bytes] | None = None

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def tree_marker(self) -> str:
        """The environment variable every reaped child (and its descendants) carries."""
        return reaper.marker(self._token)

    def request_stop(self, signum: int | None = None, _frame: Any = None) -> None:
        if signum is not None and not self._stopping:
            log.info("got %s, stopping", signal.Signals(signum).name)
        self._stopping = True

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self.request_stop)

    def pid(self, name: str) -> int | None:
        child = self._find(name)
        return child.proc.pid if child.proc is not None and child.proc.poll() is None else None

    def restarts(self, name: str) -> int:
        return self._find(name).restarts

    def _find(self, name: str) -> _Child:
        for child in self._children:
            if child.spec.name == name:
                return child
        raise KeyError(name)

    def add(self, spec: ChildSpec) -> bool:
        """Start a long-lived child now; True once it is ready (always, without a readiness check)."""
        child = _Child(spec)
        self._children.append(child)
        self._spawn(child)
        if spec.ready is None:
            return True
        ready = spec.ready
        ok = services.wait_until(lambda: self._stopping or ready(), spec.ready_timeout, child.proc)
        return ok and not self._stopping

    def run_once(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> int | None:
        """Run a one-shot command to completion; None when a stop request interrupted it."""
        log.info("running %s", name)
        proc = services.spawn(argv, env=self._env(env, reaped=True), death_signal=signal.SIGKILL)
        while proc.poll() is None:
            if self._stopping:
                services.terminate(proc, self.stop_timeout)
                return None
            time.sleep(self.poll_interval)
        return proc.returncode

    def _env(self, env: dict[str, str] | None, *, reaped: bool) -> dict[str, str]:
        from shared.config import environment

        env = environment() if env is None else dict(env)
        if reaped and sys.platform.startswith("linux"):
            if self._reaper is None:
                self._reaper = reaper.start(self._token)
            env[self.tree_marker] = "1"
        return env

    def _spawn(self, child: _Child) -> None:
        spec = child.spec
        child.proc = services.spawn(
            spec.argv,
            env=self._env(spec.env, reaped=spec.reaped),
            log_path=spec.log_path,
            death_signal=spec.death_signal,
            user=spec.user,
        )
        child.started_at = time.monotonic()
        log.info("started %s (pid %d)", spec.name, child.proc.pid)

    def _check(self, child: _Child, now: float) -> None:
        if child.proc is not None and child.proc.poll() is not None:
            code, ran = child.proc.returncode, now - child.started_at
            # A child that ran a while had a one-off failure; one that keeps dying young backs off further.
            child.failures = 0 if ran >= self.stable_after else child.failures
            delay = min(self.backoff_initial * 2**child.failures, self.backoff_max)
            child.failures += 1
            # Stragglers of a dead child (gunicorn or celery pool processes) would hold its port or queue.
            services.kill_group(child.proc.pid)
            child.proc, child.next_start = None, now + delay
            log.warning("%s exited with code %s after %.1fs; restarting in %.1fs", child.spec.name, code, ran, delay)
        if child.proc is None and now >= child.next_start and not self._stopping:
            child.restarts += 1
            self._spawn(child)

    def run(self) -> int:
        """Keep every child alive until a stop is requested, then stop them all; returns the exit code (0)."""
        try:
            while not self._stopping:
                now = time.monotonic()
                for child in self._children:
                    self._check(child, now)
                time.sleep(self.poll_interval)
        finally:
            self.stop_all()
        return 0

    def stop_all(self) -> None:
        """Stop children layer by layer, highest first, each layer's children together. Idempotent."""
        self._stopping = True
        for layer in sorted({child.spec.layer for child in self._children}, reverse=True):
            self._stop_layer([child for child in reversed(self._children) if child.spec.layer == layer])
        self._close_reaper()

    def _stop_layer(self, children: list[_Child]) -> None:
        running = [child for child in children if child.proc is not None and child.proc.poll() is None]
        started = time.monotonic()
        for child in running:
            assert child.proc is not None
            log.info("stopping %s (pid %d)", child.spec.name, child.proc.pid)
            services.send(child.proc, child.spec.stop_signal, child.spec.signal_group)
        pending, escalated = list(running), set[int]()
        while pending:
            now = time.monotonic()
            for child in list(pending):
                assert child.proc is not None
                spec, timeout = (
                    child.spec,
                    self.stop_timeout if child.spec.stop_timeout is None else child.spec.stop_timeout,
                )
                if child.proc.poll() is None and spec.stop_escalation and id(child) not in escalated:
                    after, sig = spec.stop_escalation
                    if now >= started + after:
                        log.info("%s still running after %.1fs: %s", spec.name, after, signal.Signals(sig).name)
                        services.send(child.proc, sig, spec.signal_group)
                        escalated.add(id(child))
                if child.proc.poll() is None and now >= started + timeout:
                    log.warning("%s did not stop in %.1fs: SIGKILL", spec.name, timeout)
                    services.kill_group(child.proc.pid)
                    child.proc.wait(5)
                if child.proc.poll() is not None:
                    services.kill_group(child.proc.pid)  # whatever of its group outlived it
                    log.info("%s stopped (code %s) after %.1fs", spec.name, child.proc.returncode, now - started)
                    pending.remove(child)
            time.sleep(0.02)
        for child in children:
            child.proc = None

    def _close_reaper(self) -> None:
        # The reaper sweeps the tree once its pipe closes: after a clean stop it finds nothing left.
        if self._reaper is not None:
            assert self._reaper.stdin is not None
            self._reaper.stdin.close()
            try:
                self._reaper.wait(10)
            except subprocess.TimeoutExpired:
                self._reaper.kill()
            self._reaper = None
