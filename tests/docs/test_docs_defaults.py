"""The defaults the estimators page states are those of the code."""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch

from fheestimators import NeuralNetClassifier, NeuralNetRegressor
from fheestimators.sklearn import QATMLP

PAGE = Path(__file__).resolve().parents[2] / "docs" / "estimators.md"
# a table row: | `name` | default | meaning |
ROW = re.compile(r"^\| `(?P<name>[a-z_]+)` \| (?P<default>[^|]+) \|", re.MULTILINE)


# a default that differs by estimator: False (`NeuralNetRegressor`: True)
PER_ESTIMATOR = re.compile(r"^(?P<default>[^(]+) \(`(?P<estimator>\w+)`: (?P<own>[^)]+)\)$")


def documented_defaults(estimator) -> dict:
    rows = {m["name"]: m["default"].strip() for m in ROW.finditer(PAGE.read_text(encoding="utf-8"))}
    for name, text in rows.items():
        own = PER_ESTIMATOR.match(text)
        if own:
            rows[name] = own["own"] if own["estimator"] == estimator.__name__ else own["default"]
    return {name: eval(text.strip("`"), {"torch": torch}) for name, text in rows.items()}  # noqa: S307 - our own page


def code_defaults(estimator) -> dict:
    params = estimator.get_params()
    module = {f"module__{name}": p.default for name, p in inspect.signature(QATMLP).parameters.items()
              if p.default is not inspect.Parameter.empty}
    return {**module, **params}


@pytest.mark.parametrize("estimator", [NeuralNetClassifier, NeuralNetRegressor])
def test_documented_defaults_are_the_code_defaults(estimator):
    documented = documented_defaults(estimator)
    assert len(documented) >= 16, "the parameter tables of docs/estimators.md were not found"
    actual = code_defaults(estimator())
    wrong = {name: (value, actual.get(name, "<missing>")) for name, value in documented.items()
             if actual.get(name, "<missing>") != value}
    assert not wrong, f"docs/estimators.md states defaults (documented, actual) that differ from the code: {wrong}"
