"""flake8 runs here so that CI checks the code style; the linter's settings live in setup.cfg."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_flake8_reports_nothing():
    result = subprocess.run([sys.executable, "-m", "flake8", "fheestimators", "tests", "benchmarks"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"flake8 exit {result.returncode}:\n{result.stdout}{result.stderr}"
