"""Shared fixtures: one micro configuration that compiles in seconds on 2 CPU cores."""

from __future__ import annotations

import pytest
from micro import MICRO, micro_config  # noqa: F401


@pytest.fixture
def micro():
    return micro_config
