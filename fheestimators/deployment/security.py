"""``check_security``: refuse encryption parameters below 128-bit security, before any key exists.

A client artefact sets the parameters its keys and ciphertexts are made with; one that
came from a service, or was altered, could make them weak enough to read. The check is
the rule concrete's own optimizer applies when it chooses parameters, not an
independent lattice estimate.
"""
from __future__ import annotations

import json
import math
from typing import Any

from .container import PayloadError

# concrete-optimizer's 128-bit security curve for LWE with a binary secret and q = 2**64:
# log2(noise std, on the torus) >= max(SLOPE * n + BIAS, 2 - 64) for a secret key of dimension n >= 450.
# Figures of concrete-security-curves (zama-ai/concrete, compilers/concrete-optimizer/concrete-security-curves,
# curves.gen.rs, entry 128); concrete-python 2.11 picks exactly these noises (checked on a saved model).
SECURITY_BITS = 128
MIN_LWE_DIMENSION = 450
_CURVE_SLOPE, _CURVE_BIAS = -0.025696778711484593, 2.675931372549016
_LOG2_Q = 64


def min_log2_std(lwe_dimension: int) -> float:
    """The smallest noise (log2 of its std on the torus) that is 128-bit secure at ``lwe_dimension``."""
    return max(_CURVE_SLOPE * lwe_dimension + _CURVE_BIAS, 2.0 - _LOG2_Q)


def check_security(specs: bytes) -> None:
    """Refuse client specs whose keys or encryptions are below 128-bit security, before any key exists.

    Reads concrete-python's client specs (its ``ProgramInfo`` as JSON) and requires:
    every secret key binary, 64-bit, of LWE dimension at least ``MIN_LWE_DIMENSION``
    (for a GLWE key: GLWE dimension x polynomial size); the noise of every bootstrap key,
    keyswitch key, packing keyswitch key and input encryption at least what concrete's
    128-bit security curve requires for the dimension of the key it encrypts under; every
    input encrypted. This is the check concrete's optimizer applies when it chooses the
    parameters, not an independent lattice estimate. ``PayloadError`` names the
    parameter, its value and the minimum.
    """
    try:
        info = json.loads(specs)
        keyset = info["keyset"]
        dimensions = {}
        for key in keyset["lweSecretKeys"]:
            name = f"secret key {_int(key['id'])}"
            params = key["params"]
            _native_binary(name, params)
            dimension = _int(params["lweDimension"])
            _at_least(f"the LWE dimension of {name}", dimension, MIN_LWE_DIMENSION)
            dimensions[key["id"]] = dimension
        for key in keyset["lweBootstrapKeys"]:
            name, params = f"bootstrap key {_int(key['id'])}", key["params"]
            _native_binary(name, params)
            glwe = _int(params["glweDimension"]) * _int(params["polynomialSize"])
            _same(f"the input LWE dimension of {name}", _int(params["inputLweDimension"]),
                  _dimension(dimensions, key["inputId"]))
            _same(f"the GLWE dimension x polynomial size of {name}", glwe, _dimension(dimensions, key["outputId"]))
            _enough_noise(name, params["variance"], glwe)
        for key in keyset["lweKeyswitchKeys"]:
            name, params = f"keyswitch key {_int(key['id'])}", key["params"]
            _native_binary(name, params)
            _same(f"the input LWE dimension of {name}", _int(params["inputLweDimension"]),
                  _dimension(dimensions, key["inputId"]))
            output = _dimension(dimensions, key["outputId"])
            _same(f"the output LWE dimension of {name}", _int(params["outputLweDimension"]), output)
            _enough_noise(name, params["variance"], output)
        for key in keyset.get("packingKeyswitchKeys") or []:
            name, params = f"packing keyswitch key {_int(key['id'])}", key["params"]
            _native_binary(name, params)
            glwe = _int(params["glweDimension"]) * _int(params["polynomialSize"])
            _at_least(f"the GLWE dimension x polynomial size of {name}", glwe, MIN_LWE_DIMENSION)
            _enough_noise(name, params["variance"], glwe)
        for circuit in info["circuits"]:
            for index, gate in enumerate(circuit["inputs"]):
                name = f"input {index} of {str(circuit.get('name'))[:40]}"
                ciphertext = gate["typeInfo"].get("lweCiphertext")
                if not isinstance(ciphertext, dict):
                    raise PayloadError(f"the client specs would send {name} unencrypted; every input of a model "
                                       "saved by fheestimators is encrypted: the artefact was forged")
                encryption = ciphertext["encryption"]
                if ciphertext.get("integerPrecision") != _LOG2_Q or not _native(encryption.get("modulus")):
                    raise PayloadError(f"{name} is not encrypted modulo 2**64, the modulus of concrete's "
                                       "security curves")
                dimension = _dimension(dimensions, encryption["keyId"])
                _same(f"the LWE dimension of {name}", _int(encryption["lweDimension"]), dimension)
                _enough_noise(f"the encryption of {name}", encryption["variance"], dimension)
    except PayloadError:
        raise
    except (KeyError, IndexError, TypeError, AttributeError, ValueError, RecursionError) as error:
        raise PayloadError(f"the client artefact's encryption specs are malformed ({type(error).__name__}: "
                           f"{str(error)[:80]}): they cannot be checked, so they are refused") from None


def _int(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"{value!r} is not a count")
    return value


def _dimension(dimensions: dict, key_id: Any) -> int:
    if key_id not in dimensions:
        raise PayloadError(f"the client specs refer to secret key {str(key_id)[:20]}, which they do not declare")
    return dimensions[key_id]


def _native_binary(name: str, params: dict) -> None:
    if params.get("keyType") != "binary":
        raise PayloadError(f"{name} has key type {str(params.get('keyType'))[:20]}; concrete's security curves, "
                           "and this check, are for binary keys")
    # secret keys record no modulus: their ciphertexts' do
    if params.get("integerPrecision") != _LOG2_Q or ("modulus" in params and not _native(params["modulus"])):
        raise PayloadError(f"{name} is not modulo 2**64, the modulus of concrete's security curves")


def _native(modulus: Any) -> bool:
    """Whether a modulus of the specs is the native 2**64."""
    return isinstance(modulus, dict) and isinstance(modulus.get("modulus"), dict) and "native" in modulus["modulus"]


def _at_least(what: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise PayloadError(f"the client artefact's encryption is below {SECURITY_BITS}-bit security: {what} is "
                           f"{value}, the minimum is {minimum}; refused before generating keys")


def _same(what: str, value: int, expected: int) -> None:
    if value != expected:
        raise PayloadError(f"the client specs are inconsistent: {what} is {value}, its key's is {expected}")


def _enough_noise(name: str, variance: Any, dimension: int) -> None:
    """Refuse noise below the 128-bit curve at ``dimension`` (NaN and non-numbers too)."""
    _at_least(f"the dimension of the key {name} encrypts under", dimension, MIN_LWE_DIMENSION)
    if type(variance) not in (int, float):
        raise PayloadError(f"the noise variance of {name} is not a number")
    minimum = min_log2_std(dimension)
    log2_std = 0.5 * math.log2(variance) if variance > 0 else -math.inf
    # a billionth of a bit of slack: the variance went through JSON and back
    if not log2_std >= minimum - 1e-9:
        raise PayloadError(
            f"the client artefact's encryption is below {SECURITY_BITS}-bit security: the noise variance of {name} "
            f"is {variance:.6g} (std 2**{log2_std:.2f}) at dimension {dimension}, the minimum is "
            f"{4.0 ** minimum:.6g} (std 2**{minimum:.2f}); refused before generating keys")
