"""The per-process context of a Celery worker pool, shared by the engine, QA and webhook apps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from celery.signals import worker_process_init

T = TypeVar("T")


class PerProcess(Generic[T]):
    """One context per pool process, built by `build` after the fork (Celery's `worker_process_init`), so no
    database connection, thread or model is shared between processes; built on first use where a pool runs tasks
    in the main process (solo, threads). Call it for the context."""

    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._ctx: T | None = None
        worker_process_init.connect(self._after_fork, weak=False)

    def __call__(self) -> T:
        if self._ctx is None:
            self._ctx = self._build()
        return self._ctx

    def built(self) -> T | None:
        """The context if this process has built it, else None (for a shutdown hook)."""
        return self._ctx

    def _after_fork(self, **_: Any) -> None:
        self._ctx = None
        self()
