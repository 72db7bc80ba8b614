"""FAKE upstream CosyVoice package for tests (see tests/fakes/__init__.py). Not the real model."""
