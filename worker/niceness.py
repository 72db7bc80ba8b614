"""Synthesis and QA workers run below the API: on a machine they share, a submit is answered first.

Throughput work loses only the CPU the API and the services it waits on (PostgreSQL, Redis, S3) actually use;
a submit no longer queues behind two engines for a core. Applied once in each worker's main process at start
(Celery's `worker_init`), before its pool forks, so every pool process inherits it. A worker alone on its node
(a GPU pod) is unaffected. Niceness is only ever raised: a process started nicer stays as nice.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def run_below_the_api(niceness: int) -> None:
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if niceness > current:
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
        log.info("worker runs at niceness %d (VOICEFARM_WORKER_NICE)", niceness)
