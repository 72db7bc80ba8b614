"""Logs as JSON lines, one object per record, carrying the job, batch and tenant ids it is about.

Ids come from the logging context (`log_context`, set around each task by the worker) and, in the API, from the
request being served (the authenticated tenant, the `job_id` / `batch_id` in the URL). `VOICEFARM_LOG_FORMAT=text`
gives the classic one-line text format instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

_IDS = ("job_id", "batch_id", "tenant_id", "voice_id")
_context: ContextVar[dict[str, str]] = ContextVar("voicefarm_log_context", default={})  # noqa: B039 (never mutated)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def log_context(**ids: str | None) -> Iterator[None]:
    token = _context.set(_context.get() | {k: v for k, v in ids.items() if v})
    try:
        yield
    finally:
        _context.reset(token)


def _request_ids() -> dict[str, str]:
    try:
        from flask import g, has_request_context, request
    except ImportError:  # the worker image may run without the API's dependencies
        return {}
    if not has_request_context():
        return {}
    ids = {k: str(v) for k, v in (request.view_args or {}).items() if k in _IDS}
    if g.get("tenant_id"):
        ids["tenant_id"] = str(g.tenant_id)
    return ids


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        doc |= _request_ids() | _context.get()
        doc |= {k: getattr(record, k) for k in _IDS if getattr(record, k, None)}  # logger.info(..., extra={...})
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def setup_logging(fmt: str = "json", level: int = logging.INFO) -> None:
    """Configure the root logger once per process (the API factory and the worker's logging hook call it)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_voicefarm", False)]:
        root.removeHandler(old)
    handler._voicefarm = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
