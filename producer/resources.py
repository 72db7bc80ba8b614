"""The API process's shared resources, built once by the app factory and reached from handlers."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from celery import Celery
from flask import current_app
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.engines import Capabilities
from shared.engines.fleet import Fleet
from shared.storage import Storage


@dataclass
class Farm:
    settings: Settings
    sessions: sessionmaker[Session]
    storage: Storage
    celery: Celery
    # The engines on offer: those with live workers, and the default engine (shared/engines/fleet.py).
    fleet: Fleet
    # Segment streams of speech requests (shared/audio/streaming.py), on the broker's Redis.
    streams: redis.Redis

    @property
    def capabilities(self) -> Capabilities:
        """The default engine's capabilities (what a request that names no engine and no voice gets)."""
        return self.fleet.default


def farm() -> Farm:
    resources: Farm = current_app.extensions["voicefarm"]
    return resources
