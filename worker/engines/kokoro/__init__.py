"""Kokoro-82M (int8 ONNX, CPU): the embedded default engine. Heavy imports happen in `KokoroEngine.load()`."""

from worker.engines.kokoro.engine import KokoroEngine

__all__ = ["KokoroEngine"]
