"""Fixtures for the hardware-layer tests: a clean chip environment for every test.

A developer's own MLXTRITON_CHIP must not change what these tests see, and detection of the
running machine is cached per process, so each test starts with neither.
"""

import pytest

from mlxtriton.hw import _detect


@pytest.fixture(autouse=True)
def clean_chip_environment(monkeypatch):
    monkeypatch.delenv(_detect.ENV_VAR, raising=False)
    _detect._detect_live.cache_clear()
    yield
    _detect._detect_live.cache_clear()
