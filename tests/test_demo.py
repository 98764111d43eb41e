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
    # the circuit bootstraps once per table lookup of the printed report: on 2-feature data
    # the default learns 8 bins per feature, and the network is one 6-bit lookup per class
    lookups = [line.split() for line in printed.splitlines() if " lookup: " in line]
    assert lookups, printed
    assert results["programmable_bootstraps"] == sum(int(row[-2]) for row in lookups) == 2
    assert all(int(row[-3]) == 6 for row in lookups), lookups
    # below 0.5 only if FHE's noise flips both samples: simulated with 400 seeds, samples
    # 0 and 1 of the trained network never flip (1.1% of the 500 test points do on
    # average, so that both of two points flip has probability about 5e-6)
    assert 0.5 <= results["execute_agrees_with_simulate"] <= 1.0
    assert 0.5 <= results["execute_agrees_with_disable"] <= 1.0
