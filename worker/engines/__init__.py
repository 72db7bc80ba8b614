"""Engine registry: names map to adapters, imported lazily so the worker never pulls heavy code at import."""

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
    """Constructor arguments for an engine, from the settings."""
    if name == "kokoro":
        return {"threads": settings.engine_threads or None}
    if name == "cosyvoice":
        return {
            "model_dir": settings.cosyvoice_model_dir,
            "data_dir": settings.data_dir,
            "worker_name": settings.worker_name or None,
            "load_trt": settings.cosyvoice_load_trt,
            "load_vllm": settings.cosyvoice_load_vllm,
            "fp16": settings.cosyvoice_fp16,
        }
    return {}


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
