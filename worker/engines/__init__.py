"""Engine registry: names map to adapters, imported lazily so the worker never pulls heavy code at import.

Every engine takes the settings in its constructor (`KokoroEngine(settings)`, `CosyVoiceEngine(settings)`) and reads
its own group of them (`settings.kokoro`, `settings.cosyvoice`); no engine reads the environment."""

from __future__ import annotations

from importlib import import_module

from shared.config import Settings
from shared.engines import catalogue
from worker.engines.base import Engine

_REGISTRY = {
    "kokoro": "worker.engines.kokoro:KokoroEngine",
    "cosyvoice": "worker.engines.cosyvoice:CosyVoiceEngine",
}


def engine_names() -> list[str]:
    return sorted(_REGISTRY)


def engine_options(name: str, settings: Settings) -> dict[str, object]:
    """Constructor arguments for an engine: the settings, which every engine takes (and reads its group of)."""
    return {"settings": settings} if name in _REGISTRY else {}


def create_engine(name: str, **options: object) -> Engine:
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; known: {', '.join(engine_names())}") from None
    module_name, _, cls_name = target.partition(":")
    cls = getattr(import_module(module_name), cls_name)
    engine: Engine = cls(**options)
    return engine


def instruction_catalogue(name: str) -> list[dict[str, str]]:
    """The instructions an engine honours, from its catalogue in shared/engines."""
    return [dict(item) for item in catalogue(name).instructions]
