"""Shared test set-up: hypothesis profiles and device markers.

Hypothesis runs derandomized by default (CI never flakes); ``MLXTRITON_HYPOTHESIS_PROFILE=long``
selects a larger, randomized search for local runs.
"""

import os

import mlx.core as mx
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=25, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long", derandomize=False, deadline=None, max_examples=500,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("MLXTRITON_HYPOTHESIS_PROFILE", "ci"))


def _backend() -> str:
    if not mx.is_available(mx.gpu):
        return "cpu"
    return "metal" if mx.metal.is_available() else "cuda"


BACKEND = _backend()


def pytest_collection_modifyitems(config, items):
    for item in items:
        wanted = [m for m in ("cuda", "metal") if m in item.keywords]
        if wanted and BACKEND not in wanted:
            item.add_marker(pytest.mark.skip(
                reason=f"needs MLX's {' or '.join(wanted)} backend (here: {BACKEND})"))
