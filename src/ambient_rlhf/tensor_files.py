"""Named tensors in safetensors files: written whole (:func:`save_tensors`) or one tensor
at a time (:func:`save_tensors_streaming`, for files larger than memory should hold), read
back onto the CPU with a clear error (:func:`load_tensors`).  The format carries no code."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from ambient_rlhf import AmbientError
from ambient_rlhf.io import writing


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write named tensors to a safetensors file (on the CPU, contiguous; tensors that
    share memory, such as tied weights, are copied, which safetensors requires).
    ``metadata``: the header's string map (transformers wants ``{"format": "pt"}``)."""
    from safetensors.torch import save_file

    seen: set[int] = set()
    out = {}
    for name, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in seen:
            t = t.clone()
        seen.add(ptr)
        out[name] = t
    with writing(path, "tensors"):
        save_file(out, str(path), metadata=metadata)


_ST_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL"}
_ST_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def safetensors_dtype(t: torch.Tensor) -> str:
    """The safetensors name of a tensor's dtype (``F32``, ``BF16``, ...)."""
    try:
        return _ST_DTYPES[t.dtype]
    except KeyError:
        raise TypeError(f"no safetensors dtype for {t.dtype}") from None


def save_tensors_streaming(path: str | Path, entries: list[tuple[str, str, tuple[int, ...]]], get,
                           metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file one tensor at a time, so that no more than one of them need
    be in memory: ``entries`` are ``(name, dtype, shape)`` with ``dtype`` the safetensors
    name (:func:`safetensors_dtype`), and ``get(name)`` returns the tensor, asked for when
    it is written (read then, e.g., from another memory-mapped file).  The file is the
    format's own: an 8-byte little-endian header length, the JSON header (names, dtypes,
    shapes, byte offsets; space-padded to 8 bytes), the tensors' bytes back to back;
    ``safetensors`` reads it."""
    import struct

    parts, names, offset = [], set(), 0
    for name, dtype, shape in entries:
        if name in names or name == "__metadata__":
            raise ValueError(f"tensor name {name!r} given twice (or reserved)")
        names.add(name)
        n = math.prod(int(x) for x in shape) * _ST_SIZES[dtype]
        parts.append(f'{json.dumps(name)}:{{"dtype":"{dtype}","shape":{json.dumps([int(x) for x in shape])},'
                     f'"data_offsets":[{offset},{offset + n}]}}')
        offset += n
    del names
    if metadata:
        parts.append(f'"__metadata__":{json.dumps({str(k): str(v) for k, v in metadata.items()})}')
    head = ("{" + ",".join(parts) + "}").encode("utf-8")
    del parts
    head += b" " * (-len(head) % 8)
    with writing(path, "tensors"), open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for name, dtype, shape in entries:
            t = get(name).detach().to("cpu").contiguous()
            if safetensors_dtype(t) != dtype or tuple(t.shape) != tuple(int(x) for x in shape):
                raise ValueError(f"tensor {name!r}: {safetensors_dtype(t)} {tuple(t.shape)} where the header says "
                                 f"{dtype} {tuple(shape)}")
            f.write(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def load_tensors(path: str | Path, hint: str, keys: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Read a safetensors file onto the CPU (only ``keys`` when given); an unreadable one,
    or one without a requested key, is an :class:`AmbientError` that names it and ends
    with ``hint`` (what the user can do)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise AmbientError(f"{p}: missing; {hint}")
    try:
        if keys is None:
            return load_file(str(p), device="cpu")
        with safe_open(str(p), framework="pt", device="cpu") as f:
            missing = [k for k in keys if k not in f.keys()]
            if not missing:
                return {k: f.get_tensor(k) for k in keys}
    except Exception as e:  # safetensors raises its own error type for a bad header
        raise AmbientError(f"{p}: not a readable safetensors file ({e}); {hint}") from None
    raise AmbientError(f"{p}: holds no {', '.join(missing)}; {hint}")
