"""Encrypted execution: results in sample order, samples spread over worker threads."""
import threading
import time

import numpy as np
from concrete import fhe

from fheestimators.fhe.execution import run_encrypted


def _circuit():
    table = fhe.LookupTable([(3 * i + 1) % 16 for i in range(16)])

    def f(x):
        return table[x] + x

    return fhe.Compiler(f, {"x": "encrypted"}).compile([np.arange(3).reshape(1, 3), np.full((1, 3), 15)])


class _Recorder:
    """Wraps a circuit to count how many samples run at the same time."""

    def __init__(self, circuit):
        self.circuit, self.running, self.most, self.lock = circuit, 0, 0, threading.Lock()
        self.keys = circuit.keys

    def keygen(self):
        self.circuit.keygen()

    def encrypt_run_decrypt(self, *args):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(0.05)  # long enough for the other worker to start
            return self.circuit.encrypt_run_decrypt(*args)
        finally:
            with self.lock:
                self.running -= 1


def test_run_encrypted_keeps_order_and_uses_workers():
    circuit = _circuit()
    x = np.random.default_rng(0).integers(0, 16, size=(6, 3))
    expected = (np.array([(3 * v + 1) % 16 for v in range(16)])[x] + x)
    recorder = _Recorder(circuit)
    np.testing.assert_array_equal(run_encrypted(recorder, [x], n_workers=2), expected)
    assert recorder.most == 2
    recorder = _Recorder(circuit)
    np.testing.assert_array_equal(run_encrypted(recorder, [x], n_workers=1), expected)
    assert recorder.most == 1
