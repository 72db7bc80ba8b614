"""FAKE upstream CosyVoice package for tests (see tests/support/fakes/__init__.py). Not the real model."""
