"""Tensors and small objects as wire payloads for the CrypTen communicator (no pickle, ever).

Tensors travel as (dtype/shape metadata, raw bytes), checked against each other on
receipt; objects (CrypTen's send_obj/recv_obj) as tagged JSON parsed by
:func:`mpc_agg.wire.loads_bounded`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .errors import CommunicatorError, WireError

__all__ = ["tensor_to_payload", "payload_to_tensor", "obj_encode", "obj_decode"]

_DTYPES = {
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8,
    "uint8": torch.uint8, "bool": torch.bool, "float32": torch.float32, "float64": torch.float64,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
_NUMPY = {name: torch.empty((), dtype=t).numpy().dtype for name, t in _DTYPES.items()}


def tensor_to_payload(t: torch.Tensor) -> tuple[dict[str, Any], bytes]:
    """(meta, bytes) of a tensor; the bytes are a copy, safe against later in-place edits."""
    t = t.detach()
    if t.dtype not in _DTYPE_NAMES:
        raise CommunicatorError(f"dtype {t.dtype} cannot be sent")
    return {"dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape)}, t.contiguous().numpy().tobytes()


def payload_to_tensor(meta: dict[str, Any], payload: Any) -> torch.Tensor:
    """Rebuild a tensor from (meta, bytes), checking dtype and length."""
    np_dtype = _NUMPY.get(meta.get("dtype"))  # type: ignore[arg-type]
    shape = meta.get("shape")
    if np_dtype is None or not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise WireError("bad tensor metadata")
    n = math.prod(shape)  # exact (Python ints): a huge shape cannot wrap to the payload's length
    view = memoryview(payload)
    if view.nbytes != n * np_dtype.itemsize:
        raise WireError(f"tensor payload is {view.nbytes} bytes, expected {n * np_dtype.itemsize}")
    arr = np.frombuffer(view, dtype=np_dtype).copy().reshape(shape)  # received frames are read-only
    return torch.from_numpy(arr)


# --- safe object codec for send_obj/recv_obj/broadcast_obj -------------------------

def obj_encode(o: Any) -> Any:
    if o is None or isinstance(o, (bool, int, float, str)):
        return o
    if isinstance(o, torch.Size):
        return {"__size__": list(o)}
    if isinstance(o, tuple):
        return {"__tuple__": [obj_encode(x) for x in o]}
    if isinstance(o, list):
        return [obj_encode(x) for x in o]
    if isinstance(o, dict) and all(isinstance(k, str) for k in o):
        return {"__dict__": {k: obj_encode(v) for k, v in o.items()}}
    raise CommunicatorError(f"objects of type {type(o).__name__} cannot be sent (no pickle)")


def obj_decode(o: Any) -> Any:
    if isinstance(o, list):
        return [obj_decode(x) for x in o]
    if isinstance(o, dict):
        if "__size__" in o:
            return torch.Size(int(x) for x in o["__size__"])
        if "__tuple__" in o:
            return tuple(obj_decode(x) for x in o["__tuple__"])
        if "__dict__" in o:
            return {k: obj_decode(v) for k, v in o["__dict__"].items()}
        raise WireError("unknown object encoding")
    return o


