"""Shared test settings."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import configuration

from fheestimators.quantization.tabulate import tabulation_limit

# Keep Hypothesis' example database and caches out of the project tree.
configuration.set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "fheestimators-hypothesis")


@pytest.fixture
def untabulated():
    """Builds keep the layers' own lookups: for tests of the other passes on networks whose
    inputs take so few values that ``quantization/tabulate.py`` would replace them."""
    with tabulation_limit(0):
        yield
