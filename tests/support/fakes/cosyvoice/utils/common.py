"""FAKE of `cosyvoice.utils.common` (tests only): records the seeds it is given."""

from __future__ import annotations

import random

import numpy as np

SEEDS: list[int] = []


def set_all_random_seed(seed: int) -> None:
    """Same signature as upstream's; upstream also seeds torch and CUDA, which the test environment lacks."""
    SEEDS.append(seed)
    random.seed(seed)
    np.random.seed(seed)
