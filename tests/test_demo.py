"""The README's main job, shortened: train, compile, predict encrypted, print the figures."""
import json

import pytest

from fheestimators import demo


@pytest.mark.filterwarnings("ignore")
def test_main_job_prints_accuracy_and_latency(capsys):
    results = demo.main(["--max-epochs", "3", "--fhe-samples", "2"])
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{"):]) == results
    assert 0.0 <= results["simulate_accuracy"] <= 1.0
    assert results["fresh_points"] == 50_000 and 0.9 < results["fresh_bayes_accuracy"] < 1.0
    assert 0.0 <= results["fresh_simulate_accuracy"] <= results["fresh_bayes_accuracy"] + 0.01
    # the same integers, run two ways; simulate also draws the bootstrap's mistakes
    assert abs(results["disable_accuracy"] - results["simulate_accuracy"]) <= 0.03
    assert abs(results["fresh_disable_accuracy"] - results["fresh_simulate_accuracy"]) <= 0.03
    assert results["execute_latency_s"] > 0 and results["keygen_s"] > 0
    assert results["programmable_bootstraps"] > 0
    assert 0.5 <= results["execute_agrees_with_simulate"] <= 1.0
    assert 0.5 <= results["execute_agrees_with_disable"] <= 1.0
