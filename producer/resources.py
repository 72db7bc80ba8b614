"""The API process's shared resources, built once by the app factory and reached from handlers."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from flask import current_app
from sqlalchemy.orm import Session, sessionmaker

from producer.limits import RateLimiter
from shared.config import Settings
from shared.storage import Storage
from worker.engines.base import Capabilities


@dataclass
class Farm:
    settings: Settings
    sessions: sessionmaker[Session]
    storage: Storage
    celery: Celery
    capabilities: Capabilities
    rate_limiter: RateLimiter


def farm() -> Farm:
    resources: Farm = current_app.extensions["voicefarm"]
    return resources
