"""What a test does when something it needs is missing: under CI (`CI` set) that is a failure, since it means an
install step is missing; on a developer's machine the test is skipped with the reason."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def missing(message: str) -> NoReturn:
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def debian_tool(command: str, package: str) -> str:
    """The path of a command from Debian's packages, installed with apt-get when missing and the tests run as root
    (CI does): a fresh machine has only what the project's own scripts install."""
    found = shutil.which(command)
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "--no-install-recommends", package]
        if subprocess.run(install, env=env, check=False).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, check=True)
            subprocess.run(install, env=env, check=True)
        found = shutil.which(command)
        if found:
            return found
    missing(f"{command} is missing: apt-get install {package} (as root)")
