"""Webhook delivery: POST the finished job's JSON to the URL the client gave, without following redirects."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any

from sqlalchemy import update

from shared.db import transaction
from shared.errors import BadRequest
from shared.models import Job, utcnow
from shared.views import job_view
from shared.webhooks import check_webhook_url
from worker.context import WorkerContext

log = logging.getLogger(__name__)
TIMEOUT_S = 5.0


class WebhookFailed(Exception):
    """The receiver did not take the delivery; worth another try."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect could point the farm at an internal address after the URL was checked.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def deliver_webhook(ctx: WorkerContext, job_id: str) -> str:
    with ctx.sessions() as session:
        job = session.get(Job, job_id)
        if job is None or not job.webhook_url or job.webhook_delivered_at is not None:
            return "skipped"
        body = {"event": f"job.{job.status}", "job": job_view(job, ctx.storage, ctx.settings.presign_expiry_s)}
        url = job.webhook_url
    try:
        check_webhook_url(url, ctx.settings)
    except BadRequest as exc:
        _record(ctx, job_id, error=f"refused: {exc.message}")
        return "refused"
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "voicefarm-webhook/1"},
        method="POST",
    )
    try:
        with _opener.open(request, timeout=TIMEOUT_S) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        _record(ctx, job_id, error=f"unreachable: {type(exc).__name__}")
        raise WebhookFailed(str(exc)) from exc
    if not 200 <= status < 300:
        _record(ctx, job_id, error=f"answered {status}")
        raise WebhookFailed(f"answered {status}")
    _record(ctx, job_id, delivered=True)
    return "delivered"


def _record(ctx: WorkerContext, job_id: str, *, delivered: bool = False, error: str | None = None) -> None:
    values: dict[str, Any] = {"webhook_attempts": Job.webhook_attempts + 1, "webhook_error": error}
    if delivered:
        values["webhook_delivered_at"] = utcnow()
    with transaction(ctx.sessions) as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))
