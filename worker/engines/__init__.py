"""Engine registry: names map to adapters, imported lazily so the worker never pulls heavy code at import."""

from __future__ import annotations

from importlib import import_module

from worker.engines.base import Engine

_REGISTRY = {
    "kokoro": "worker.engines.kokoro:KokoroEngine",
    "cosyvoice": "worker.engines.cosyvoice:CosyVoiceEngine",
}


def engine_names() -> list[str]:
    return sorted(_REGISTRY)


def create_engine(name: str, **options: object) -> Engine:
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; known: {', '.join(engine_names())}") from None
    module_name, _, cls_name = target.partition(":")
    cls = getattr(import_module(module_name), cls_name)
    engine: Engine = cls(**options)
    return engine
