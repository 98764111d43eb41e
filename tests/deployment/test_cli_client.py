"""The client's command line against ``fheestimators serve`` on 127.0.0.1: ``predict``, ``keygen`` and ``info``.

One service (one evaluator process) runs for the module, on the conftest's small
classifier (exact rounding, p_error 1e-9: encrypted labels equal ``fhe="disable"``'s).
Keys are generated once, while it boots, and copied into each test's key folder; the
keygen test generates its own. Commands run in-process through ``cli.main`` (capsys),
and once as ``python -m fheestimators.deployment`` for the real exit status.
"""
from __future__ import annotations

import dataclasses
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest

from fheestimators.deployment import Client, RemoteModel, cli, container
from fheestimators.deployment import fingerprint as fingerprint_of
from fheestimators.deployment.artifacts import model_fingerprint

from serving import Service, free_port, metric


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def service(saved_classifier, tmp_path_factory):
    """Started here, waited for in ``url``: it boots while the template keys are generated."""
    with Service.in_tmp(saved_classifier, tmp_path_factory, "cli").start("--workers", "1") as service:
        yield service


@pytest.fixture(scope="module")
def template_keys(saved_classifier, tmp_path_factory) -> Path:
    """A key folder holding the secret key only (no artefact, no registration): copied per test."""
    folder = tmp_path_factory.mktemp("template_keys")
    Client(saved_classifier, key_dir=folder).keygen()
    return folder


@pytest.fixture(scope="module")
def url(service, template_keys) -> str:
    return service.wait_ready().url


@pytest.fixture(scope="module")
def pin(saved_classifier) -> str:
    return fingerprint_of(saved_classifier)


@pytest.fixture
def key_dir(template_keys, tmp_path) -> Path:
    """A fresh client's key folder, with keys but never used with a service."""
    return Path(shutil.copytree(template_keys, tmp_path / "keys"))


@pytest.fixture(scope="module")
def registered_keys(url, pin, template_keys, tmp_path_factory) -> Path:
    """A key folder already used with the service: keys uploaded, artefact and registration kept."""
    folder = Path(shutil.copytree(template_keys, tmp_path_factory.mktemp("registered") / "keys"))
    with RemoteModel(url, key_dir=folder, fingerprint=pin) as remote:
        remote.register()
    return folder


@pytest.fixture
def used_key_dir(registered_keys, tmp_path) -> Path:
    """A returning client's key folder: no pin needed, no upload."""
    return Path(shutil.copytree(registered_keys, tmp_path / "keys"))


@pytest.fixture(scope="module")
def data(rows, classifier, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """Four rows as a CSV file, and the values read back from it (what the model must see).

    Two far outside the training range, and one the model labels otherwise than the
    first (it says "below" to most rows after its 3 epochs), found on a grid.
    """
    grid = np.array([[a, b] for a in np.linspace(-3, 3, 13) for b in np.linspace(-3, 3, 13)], dtype=np.float32)
    other = grid[classifier.predict(grid, fhe="disable") != classifier.predict(rows[:1], fhe="disable")[0]][:1]
    path = tmp_path_factory.mktemp("data") / "data.csv"
    pd.DataFrame(np.vstack([rows[[0, 6, 7]], other]), columns=["x0", "x1"]).to_csv(path, index=False)
    return path, pd.read_csv(path).to_numpy()


@pytest.fixture
def closed_url() -> str:
    """An address where nothing listens: the connection is refused."""
    return f"http://127.0.0.1:{free_port()}"


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _uploads(url: str) -> float:
    return metric(url, "fheestimators_requests_total", 'route="/keys",status="201"')


def _one_line_error(err: str, command: str = "predict") -> str:
    """The message of a refusal: exactly one line on stderr, no traceback."""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fheestimators {command}: error: "), err
    return lines[0]


# ---------------------------------------------------------------- predict

def test_predict_gives_the_model_s_labels(capsys, url, pin, key_dir, data, classifier):
    path, X = data
    before = _uploads(url)
    status, out, err = _run(capsys, "predict", "--url", url, "--key-dir", str(key_dir), "--fingerprint", pin,
                            "--batch-size", "3", str(path))
    assert status == 0, err
    table = pd.read_csv(io.StringIO(out))
    assert list(table.columns) == ["prediction"]
    expected = classifier.predict(X, fhe="disable")
    assert set(expected) == {"above", "below"}  # both labels: a constant would not pass
    np.testing.assert_array_equal(table["prediction"].to_numpy(), expected)
    assert _uploads(url) == before + 1  # keys uploaded on first use
    assert fingerprint_of(key_dir / "client.zip") == pin  # the verified download, kept for later runs
    assert (key_dir / "remote.json").is_file()


def test_proba_to_a_file_then_a_run_without_pin_reuses_the_key_folder(capsys, url, key_dir, data, classifier,
                                                                      saved_classifier, tmp_path):
    path, X = data
    out_file = tmp_path / "proba.csv"
    before = _uploads(url)
    status, out, err = _run(capsys, "predict", "--url", url, "--key-dir", str(key_dir), "--model",
                            str(saved_classifier), "--proba", "--out", str(out_file), str(path))
    assert status == 0, err
    assert out == ""
    proba = pd.read_csv(out_file)
    assert list(proba.columns) == [str(label) for label in classifier.classes_]
    np.testing.assert_allclose(proba.to_numpy(), classifier.predict_proba(X, fhe="disable"), rtol=1e-6)
    assert _uploads(url) == before + 1
    # the user's artefact is kept: it pins the next runs
    assert (key_dir / "client.zip").read_bytes() == (saved_classifier / "client.zip").read_bytes()

    status, out, err = _run(capsys, "predict", "--url", url, "--key-dir", str(key_dir), str(path))
    assert status == 0, err
    np.testing.assert_array_equal(pd.read_csv(io.StringIO(out))["prediction"].to_numpy(),
                                  classifier.predict(X, fhe="disable"))
    assert _uploads(url) == before + 1  # no new upload: the registration in the key folder is reused


def test_predict_reads_stdin(capsys, monkeypatch, url, used_key_dir, data, classifier):
    path, X = data
    monkeypatch.setattr(sys, "stdin", io.StringIO(path.read_text()))
    status, out, err = _run(capsys, "predict", "--url", url, "--key-dir", str(used_key_dir), "-")
    assert status == 0, err
    np.testing.assert_array_equal(pd.read_csv(io.StringIO(out))["prediction"].to_numpy(),
                                  classifier.predict(X, fhe="disable"))


def test_an_unreachable_service_exits_1_in_one_line_as_a_process(closed_url, pin, data, tmp_path):
    result = subprocess.run([sys.executable, "-m", "fheestimators.deployment", "predict", "--url", closed_url,
                             "--key-dir", str(tmp_path / "keys"), "--fingerprint", pin, str(data[0])],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "cannot reach the service" in _one_line_error(result.stderr)
    assert result.stdout == ""


def test_a_missing_pin_exits_2_saying_how_to_pin(capsys, closed_url, data, tmp_path):
    status, out, err = _run(capsys, "predict", "--url", closed_url, "--key-dir", str(tmp_path / "keys"),
                            str(data[0]))
    assert status == 2 and out == ""
    line = _one_line_error(err)
    assert "--fingerprint" in line and "--model" in line
    assert not (tmp_path / "keys").exists()  # nothing written, nothing asked of the network


@pytest.mark.parametrize("text, reason", [
    ("x0,x1\n0.5,0.5,0.5\n", "more cells than the header"),        # read as an index by pandas' default
    ("x0,x1\n0.5,0.5\n0.1,0.2,0.3\n", "Expected 2 fields in line 3"),
    ("", "No columns to parse"),
])
def test_a_malformed_csv_exits_1_before_any_request(capsys, closed_url, pin, tmp_path, text, reason):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    status, out, err = _run(capsys, "predict", "--url", closed_url, "--key-dir", str(tmp_path / "keys"),
                            "--fingerprint", pin, str(path))
    assert status == 1 and out == ""
    assert reason in _one_line_error(err)  # not "cannot reach the service": the file is read first


@pytest.mark.parametrize("text, reason", [
    ("x0,x1\n0.5,abc\n", "column 'x1' holds 'abc', not a finite number in row 1"),
    ("x0,x1\n0.5,0.5\n,0.5\n", "column 'x0' is empty in row 2"),
    ("x0,x1,x2\n0.5,0.5,0.5\n", "3 columns, the model takes 2 features"),
])
def test_bad_cells_are_named_in_one_line(capsys, url, pin, key_dir, tmp_path, text, reason):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    before = _uploads(url)
    status, out, err = _run(capsys, "predict", "--url", url, "--key-dir", str(key_dir), "--fingerprint", pin,
                            str(path))
    assert status == 1 and out == ""
    assert reason in _one_line_error(err)
    assert _uploads(url) == before  # refused here, before the keys of this new client were uploaded


def _repacked(saved: Path, folder: Path, change: Callable[[dict, dict], None]) -> Path:
    """``folder/client.zip``: the saved client artefact with ``change(header, members)`` made, fingerprinted anew.

    A sound artefact of another model (the fingerprint covers every member), made in
    milliseconds instead of the seconds of a fit and a compilation.
    """
    header, members = container.unpack((saved / "client.zip").read_bytes(), "client", max_bytes=1 << 30)
    change(header, members)
    fields = {k: v for k, v in header.items() if k not in ("format", "kind", "fingerprint", "members")}
    other = model_fingerprint(header["circuit_digest"], members)
    (folder / "client.zip").write_bytes(container.pack("client", other, members, **fields))
    assert fingerprint_of(folder) == other
    return folder


def _another_model(saved: Path, folder: Path) -> Path:
    """The same model with a byte more in its description: still valid, but another model to the fingerprint."""
    return _repacked(saved, folder, lambda header, members: members.update({"model.json": members["model.json"]
                                                                           + b" "}))


def test_a_pin_of_another_model_is_refused(capsys, url, key_dir, data, saved_classifier, tmp_path):
    other = _another_model(saved_classifier, tmp_path)
    status, out, err = _run(capsys, "predict", "--url", url, "--key-dir", str(key_dir),
                            "--fingerprint", fingerprint_of(other), str(data[0]))
    assert status == 1 and out == ""
    assert "not the pinned model" in _one_line_error(err)
    status, out, err = _run(capsys, "predict", "--url", url, "--key-dir", str(key_dir),
                            "--model", str(other), str(data[0]))
    assert status == 1 and out == ""
    assert "the client artefact is for model" in _one_line_error(err)
    assert not (key_dir / "client.zip").exists()  # a model the service does not run is not kept


def test_a_refusal_of_the_service_exits_1_with_its_reason(capsys, url, used_key_dir, data):
    registration = json.loads((used_key_dir / "remote.json").read_text())
    registration["token"] = "not-the-token"
    (used_key_dir / "remote.json").write_text(json.dumps(registration))
    status, out, err = _run(capsys, "predict", "--url", url, "--key-dir", str(used_key_dir), str(data[0]))
    assert status == 1 and out == ""
    assert "the service answered 401" in _one_line_error(err)


def test_usage_errors_exit_2(capsys, closed_url, pin, data, tmp_path):
    base = ["predict", "--key-dir", str(tmp_path / "keys"), str(data[0])]
    for options, reason in [(["--url", "127.0.0.1:8000", "--fingerprint", pin], "not an http:// or https://"),
                            (["--url", closed_url, "--fingerprint", "abc"], "64 hex digits"),
                            (["--url", closed_url, "--model", str(tmp_path / "nothing")], "no client.zip"),
                            (["--url", closed_url, "--fingerprint", pin, "--token-file", str(tmp_path / "none")],
                             "cannot read the token file")]:
        status, out, err = _run(capsys, *base, *options)
        assert status == 2 and out == "", err
        assert reason in _one_line_error(err)
    with pytest.raises(SystemExit) as exit_info:  # argparse's own refusals: usage line, then the error
        cli.main([*base, "--url", closed_url, "--batch-size", "0"])
    assert exit_info.value.code == 2


# ---------------------------------------------------------------- keygen

def test_keygen_then_upload_then_predict_reuses_both(capsys, url, saved_classifier, data, classifier, tmp_path):
    keys = tmp_path / "keys"
    status, out, err = _run(capsys, "keygen", "--key-dir", str(keys), "--model", str(saved_classifier))
    assert status == 0, err
    pin = fingerprint_of(saved_classifier)
    assert pin in out and str(keys) in out
    assert any((keys / f"keyset-{pin[:16]}").iterdir())  # the secret key, generated here
    assert fingerprint_of(keys / "client.zip") == pin

    before = _uploads(url)
    status, out, err = _run(capsys, "keygen", "--key-dir", str(keys), "--url", url)  # pinned by the key folder
    assert status == 0, err
    assert "uploaded" in out and _uploads(url) == before + 1

    status, out, err = _run(capsys, "predict", "--url", url, "--key-dir", str(keys), str(data[0]))
    assert status == 0, err
    np.testing.assert_array_equal(pd.read_csv(io.StringIO(out))["prediction"].to_numpy(),
                                  classifier.predict(data[1], fhe="disable"))
    assert _uploads(url) == before + 1


def test_keygen_needs_a_model(capsys, tmp_path, pin):
    status, out, err = _run(capsys, "keygen", "--key-dir", str(tmp_path / "keys"), "--fingerprint", pin)
    assert status == 2 and out == ""
    assert "--model" in _one_line_error(err, "keygen")


# ---------------------------------------------------------------- info

def test_info_tells_features_sizes_and_cost(capsys, saved_classifier, pin):
    header = Client(saved_classifier).header
    status, out, err = _run(capsys, "info", str(saved_classifier))
    assert status == 0, err
    assert "classifier" in out and pin in out
    assert "features:         2" in out
    assert "above, below" in out
    assert f"({header['evaluation_keys_bytes']} bytes)" in out and f"({sum(header['input_bytes'])} bytes)" in out

    status, out, err = _run(capsys, "info", str(saved_classifier / "client.zip"), "--json")
    assert status == 0, err
    description = json.loads(out)
    assert description["kind"] == "classifier" and description["fingerprint"] == pin
    assert description["n_features"] == 2 and description["classes"] == ["above", "below"]
    assert description["evaluation_keys_bytes"] == header["evaluation_keys_bytes"]
    assert description["input_bytes"] == header["input_bytes"]
    assert (description["preprocessing"] is None) == (Client(saved_classifier).model.preprocessing is None)
    assert description["seconds_per_sample"] > 0 and description["keygen_seconds"] > 0
    assert description["cost_model"] == "default"  # the tests run with no calibration file


def test_info_of_an_artefact_without_circuit_work(capsys, saved_classifier, tmp_path):
    older = _repacked(saved_classifier, tmp_path, lambda header, members: header.pop("circuit_work", None))
    status, out, err = _run(capsys, "info", str(older))
    assert status == 0, err
    assert out.count("unknown (saved by an older version)") == 2
    status, out, err = _run(capsys, "info", str(older), "--json")
    description = json.loads(out)
    assert description["seconds_per_sample"] is None and description["cost_note"].startswith("unknown")


def test_info_of_a_missing_or_altered_artefact_exits_1(capsys, saved_classifier, tmp_path):
    status, _, err = _run(capsys, "info", str(tmp_path))
    assert status == 1 and "no client.zip" in _one_line_error(err, "info")
    data = bytearray((saved_classifier / "client.zip").read_bytes())
    data[-1] ^= 1
    (tmp_path / "client.zip").write_bytes(bytes(data))
    status, _, err = _run(capsys, "info", str(tmp_path))
    assert status == 1 and "altered" in _one_line_error(err, "info")


# ---------------------------------------------------------------- models fitted on a table

@pytest.fixture(scope="module")
def table_model(saved_classifier, tmp_path_factory) -> Path:
    """The classifier's client artefact as if fitted on the columns width and height behind a scaler.

    Made by rewriting the artefact (``_repacked``): a pipeline of this size takes seconds
    to fit and compile, and only its clear ends matter here.
    """
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    scaler = make_pipeline(StandardScaler()).fit(pd.DataFrame({"width": [0.0, 1.0], "height": [1.0, 0.0]}))
    model = dataclasses.replace(Client(saved_classifier).model, feature_names=["width", "height"],
                                preprocessing=scaler)
    return _repacked(saved_classifier, tmp_path_factory.mktemp("table_model"),
                     lambda header, members: members.update(model.to_bytes()))


def test_a_table_model_gets_the_table_and_names_missing_columns(table_model):
    from fheestimators.deployment import commands

    client_model = Client(table_model).model
    frame = pd.DataFrame({"height": [0.5], "width": ["not a number"]})  # the preprocessing reads the cells
    assert commands.model_inputs(frame, client_model, "data.csv") is frame
    with pytest.raises(commands.CommandError, match="data.csv has no column 'width'"):
        commands.model_inputs(frame[["height"]], client_model, "data.csv")


def test_info_of_a_table_model(capsys, table_model):
    status, out, err = _run(capsys, "info", str(table_model))
    assert status == 0, err
    assert "features:         2: width, height" in out and "StandardScaler" in out
    description = json.loads(_run(capsys, "info", str(table_model), "--json")[1])
    assert description["feature_names"] == ["width", "height"] and description["n_features"] == 2
    assert "StandardScaler" in description["preprocessing"]
