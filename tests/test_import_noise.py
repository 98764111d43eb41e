"""Importing fheestimators prints nothing: third-party notices users cannot act on are silenced."""
import subprocess
import sys


def test_import_is_quiet():
    code = "import fheestimators, brevitas.graph.equalize, fheestimators.deployment"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "pkg_resources" not in result.stderr and "fast_hadamard_transform" not in result.stderr, result.stderr


def test_other_warnings_of_those_packages_still_show():
    code = ("import fheestimators, warnings\n"
            "warnings.warn_explicit('another notice', UserWarning, 'x.py', 1, module='concrete')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "another notice" in result.stderr
