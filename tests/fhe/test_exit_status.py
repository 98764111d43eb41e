"""A process that ran a circuit exits with its own status (concrete-python's exit handler made it 0)."""
import subprocess
import sys
import textwrap

# imports fheestimators first, then runs a real circuit, as a user's script would
_RUN_CIRCUIT = """
import fheestimators
from concrete import fhe

circuit = fhe.Compiler(lambda x: x + 1, {"x": "encrypted"}).compile(range(8))
circuit.keygen()
assert circuit.encrypt_run_decrypt(3) == 4
"""

_ENDINGS = {
    "script_exit_3": ("script", "import sys\nsys.exit(3)\n", 3),
    "pytest_fails": ("pytest", "def test_after_a_circuit():\n    assert False\n", 1),
    "pytest_passes": ("pytest", "def test_after_a_circuit():\n    assert True\n", 0),
}


def test_exit_status_survives_a_circuit_run(tmp_path):
    processes = {}
    for name, (kind, ending, _) in _ENDINGS.items():
        if kind == "script":
            path = tmp_path / f"{name}.py"
            path.write_text(_RUN_CIRCUIT + ending)
            command = [sys.executable, str(path)]
        else:
            path = tmp_path / f"test_{name}.py"
            # the circuit runs inside the test module, so pytest's own exit comes after it
            body = textwrap.indent(_RUN_CIRCUIT, "    ")
            path.write_text(f"def test_runs_a_circuit():\n{body}\n\n{ending}")
            command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                       "--rootdir", str(tmp_path), str(path)]
        # all at once: each spends most of its time importing torch and concrete
        processes[name] = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, text=True)
    outputs = {}
    for name, process in processes.items():
        outputs[name], _ = process.communicate(timeout=300)
        expected = _ENDINGS[name][2]
        assert process.returncode == expected, (f"{name}: exit {process.returncode}, expected {expected}\n"
                                                f"{outputs[name]}")
    # the circuit really ran in the failing suite before its failure
    assert "1 failed, 1 passed" in outputs["pytest_fails"]
