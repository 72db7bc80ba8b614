"""Synthesis and QA workers run below the API: on a machine they share, a submit is answered first.

Throughput work loses only the CPU the API and the services it waits on (PostgreSQL, Redis, S3) actually use;
a submit no longer queues behind two engines for a core. Applied once in each worker's main process at start
(Celery's `worker_init`), before its pool forks, so every pool process inherits it. A worker alone on its node
(a GPU pod) is unaffected. Niceness is only ever raised: a process started nicer stays as nice.

A process's nice value alone is not enough on Linux with scheduler autogroups (`sched_autogroup_enabled`, on by
default in most distributions): the CPU is shared fairly between autogroups, one per session, and a nice value
only ranks threads inside their own group. The farm starts each worker in its own session, so a niced worker
still took an equal share against the API's session (measured: submit p99 unchanged between nice 10 and 19,
docs/benchmarks/history.md). A worker that leads its session therefore also raises its autogroup's nice value, which the
kernel applies to the group as a whole. One that does not lead its session (started by hand from a shell) leaves
the group alone: that group is the shell's, with everything else the user runs in it.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)
AUTOGROUP = Path("/proc/self/autogroup")


def run_below_the_api(niceness: int) -> None:
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if niceness > current:
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
        log.info("worker runs at niceness %d (VOICEFARM_WORKER_NICE)", niceness)
    if os.getsid(0) == os.getpid():
        raise_autogroup(niceness)


def autogroup_nice(path: Path = AUTOGROUP) -> int | None:
    """The nice value of this process's autogroup, or None where the kernel has none ("/autogroup-85 nice 0")."""
    try:
        return int(path.read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def raise_autogroup(niceness: int, path: Path = AUTOGROUP) -> bool:
    """Raise this session's autogroup to `niceness`; True when it is there now."""
    current = autogroup_nice(path)
    if current is None:
        return False  # no autogroups: nice values rank every thread on the machine already
    if current >= niceness:
        return True
    # Unprivileged writers are rate-limited machine-wide (EAGAIN within 100 ms of another's): workers start
    # together, so try a few times.
    for _ in range(10):
        try:
            path.write_text(str(niceness))
        except OSError as exc:
            if exc.errno != errno.EAGAIN:
                log.warning("could not raise the worker's autogroup to nice %d: %s", niceness, exc)
                return False
            time.sleep(0.15)
            continue
        log.info("worker's autogroup runs at nice %d (VOICEFARM_WORKER_NICE)", niceness)
        return True
    log.warning("could not raise the worker's autogroup to nice %d: the kernel kept refusing (EAGAIN)", niceness)
    return False
