"""Shared test settings."""
from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import configuration

# Keep Hypothesis' example database and caches out of the project tree.
configuration.set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "fheestimators-hypothesis")
