"""What a test does when something it needs is missing: under CI (`CI` set) that is a failure, since it means an
install step is missing; on a developer's machine the test is skipped with the reason."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def missing(message: str) -> NoReturn:
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)
