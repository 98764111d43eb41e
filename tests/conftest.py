"""Shared test settings."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import configuration

from fheestimators.quantization.tabulate import tabulation_limit
from fheestimators._threads import one_torch_thread as _one_torch_thread

# Keep Hypothesis' example database and caches out of the project tree.
configuration.set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "fheestimators-hypothesis")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """torch computes on one thread in the tests: pytest-xdist already runs a process per core,
    and the tests' networks are tiny, so a thread pool in each process only makes the cores'
    threads wait for each other (about 30% less CPU on the CNN and inputset tests, measured)."""
    with _one_torch_thread():
        yield


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path_factory, monkeypatch):
    """Each test runs away from the user's files and settings, as on a fresh CI machine.

    - ``HOME`` and the XDG directories point into a new temporary folder: the cost model
      (``fhe/cost.py``: ``$XDG_CACHE_HOME``, else ``~/.cache``, ``/fheestimators/cost_model.json``),
      the service's key store (``$XDG_STATE_HOME``, else ``~/.local/state``) and any other
      per-user file are neither read nor written;
    - no ``FHEESTIMATORS_*`` variable is set: the cost model's path, the service's limits,
      token and model directory come from the tests only (a subprocess, such as the
      service ``docs/deployment.md`` starts, inherits this environment).

    Function scope: a variable a test's code sets in ``os.environ`` is gone for the next test.
    """
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for name, folder in (("XDG_CACHE_HOME", ".cache"), ("XDG_STATE_HOME", ".local/state"),
                         ("XDG_CONFIG_HOME", ".config"), ("XDG_DATA_HOME", ".local/share")):
        monkeypatch.setenv(name, str(home / folder))
    for name in [name for name in os.environ if name.startswith("FHEESTIMATORS_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def untabulated():
    """Builds keep the layers' own lookups: for tests of the other passes on networks whose
    inputs take so few values that ``quantization/tabulate.py`` would replace them."""
    with tabulation_limit(0):
        yield
