"""A chosen ``--evaluator-memory-gb`` is tried at startup: too low for the model, the service does not start.

Under such a ceiling an evaluator could not start, or concrete's runtime waited for
threads it could not create until the sample's timeout quarantined an honest client's
keys (measured: 0.6 and 1.0 GB on the tests' model, whose evaluators map 1.5 GB).
"""
from __future__ import annotations

import time

import pytest

from fheestimators.deployment import Server
from fheestimators.deployment.artifacts import SERVER_FILE, read_artifact
from fheestimators.deployment.service import Limits, app_from_environment
from fheestimators.deployment.service.ceiling import check_ceiling, check_room
from fheestimators.deployment.service.limits import ENV_KEY_STORE, ENV_MODEL_DIR, GB
from fheestimators.deployment.service.workers import Evaluators


def test_a_ceiling_an_evaluator_cannot_run_under_is_refused_at_startup(saved_classifier, tmp_path, monkeypatch,
                                                                       capsys):
    # as `fheestimators serve MODEL --evaluator-memory-gb 0.3` hands it to uvicorn's factory
    limits = Limits(evaluator_memory_gb=0.3, sample_timeout_s=60)
    for name, value in {**limits.to_environment(), ENV_MODEL_DIR: str(saved_classifier),
                        ENV_KEY_STORE: str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    start = time.monotonic()
    with pytest.raises(SystemExit) as exit_:
        app_from_environment()
    assert exit_.value.code == 2
    assert time.monotonic() - start < 60  # a refusal, not the timeout of a hung run
    [line] = capsys.readouterr().err.splitlines()[-1:]
    assert line.startswith("fheestimators serve: --evaluator-memory-gb 0.30 is too low for this model: an evaluator "
                           "under it could not run one sample"), line


def test_a_ceiling_that_runs_a_sample_must_also_hold_the_kept_key_sets(saved_classifier):
    server = Server(saved_classifier)
    keys_bytes = server.header["evaluation_keys_bytes"]
    evaluators = Evaluators(read_artifact(saved_classifier, SERVER_FILE), workers=1, memory_bytes=8 * GB)
    try:
        mapped = check_ceiling(saved_classifier, server, evaluators, 8 * GB, keys_per_worker=4, timeout=60)
    finally:
        evaluators.close()
    assert 0.1 * GB < mapped < 8 * GB
    check_room(8 * GB, mapped, keys_bytes, keys_per_worker=4)
    with pytest.raises(ValueError, match="keeping 1000 key sets then reading one more takes"):
        check_room(8 * GB, mapped, keys_bytes, keys_per_worker=1000)
