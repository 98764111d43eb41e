"""The client's clear-side objects as JSON plus arrays, and back, without pickle.

Only the classes listed in ``_CLASSES`` can be rebuilt, field by field, so reading a
client artefact never runs code that came with it.
"""
from __future__ import annotations

import dataclasses
import io
import json
from typing import Any

import numpy as np

from ..quantization.program import Output
from ..quantization.quantizers import UniformQuantizer
from ..quantization.values import Dequantize, ElementwiseOp

_CLASSES = {cls.__name__: cls for cls in (UniformQuantizer, Output, Dequantize, ElementwiseOp)}


def dumps(obj: Any) -> tuple[bytes, bytes]:
    """``obj`` as JSON bytes and an ``.npz`` of the arrays it holds."""
    arrays: dict[str, np.ndarray] = {}
    tree = _encode(obj, arrays)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return json.dumps(tree).encode(), buffer.getvalue()


def loads(tree_bytes: bytes, arrays_bytes: bytes) -> Any:
    with np.load(io.BytesIO(arrays_bytes), allow_pickle=False) as arrays:
        return _decode(json.loads(tree_bytes), {name: arrays[name] for name in arrays.files})


def _encode(obj: Any, arrays: dict) -> Any:
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, float, np.integer, np.floating, np.ndarray, np.bool_)):
        array = np.asarray(obj)
        if array.dtype == object:
            raise TypeError("arrays of Python objects cannot be saved for the client: use numbers or strings")
        name = f"a{len(arrays)}"
        arrays[name] = array
        return {"$array": name}
    if isinstance(obj, (list, tuple)):
        return {"$list": [_encode(item, arrays) for item in obj]}
    if isinstance(obj, dict):
        if not all(isinstance(key, str) for key in obj):
            raise TypeError("only string keys can be saved for the client")
        return {"$dict": {key: _encode(value, arrays) for key, value in obj.items()}}
    name = type(obj).__name__
    if _CLASSES.get(name) is type(obj):
        fields = {f.name: _encode(getattr(obj, f.name), arrays) for f in dataclasses.fields(obj)}
        return {"$class": name, "fields": fields}
    raise TypeError(
        f"{name} cannot be saved for the client: the ops after the model's last table lookup must "
        "be ONNX element-wise ops (see the deployment guide)")


def _decode(tree: Any, arrays: dict) -> Any:
    if tree is None or isinstance(tree, (bool, str, int, float)):
        return tree
    if not isinstance(tree, dict) or len(tree) not in (1, 2):
        raise ValueError("the client artefact's model description is damaged")
    if "$array" in tree:
        array = arrays[tree["$array"]]
        return array[()] if array.ndim == 0 and array.dtype.kind in "iufb" else array
    if "$list" in tree:
        return [_decode(item, arrays) for item in tree["$list"]]
    if "$dict" in tree:
        return {key: _decode(value, arrays) for key, value in tree["$dict"].items()}
    if tree.get("$class") in _CLASSES:
        cls = _CLASSES[tree["$class"]]
        return cls(**{key: _decode(value, arrays) for key, value in tree["fields"].items()})
    raise ValueError("the client artefact's model description is damaged")
