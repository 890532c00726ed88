"""Checkpoints that hold everything needed to continue a run bit-for-bit, and no code.

A checkpoint is a directory ``<out>/checkpoints/step-<N>/`` holding

* ``state.safetensors`` + ``state.json``: one nested dict (optimizer and scheduler states,
  RNG states, data position, step, config, anything else the trainer needs), split by
  :func:`save_state`: every tensor goes to the safetensors file, named by its path in the
  dict (``optimizer/state/0/exp_avg``); everything else (numbers, strings, lists, tuples,
  dicts with int keys, NumPy arrays as base64) goes to the JSON file, which names the
  tensors where they stood.  :func:`load_state` rebuilds the dict exactly.  Neither format
  can carry code: nothing a run reads back is unpickled.
* the model(s) the trainer saved next to it (``save_models``);
* ``SHA256SUMS``, written last: the sha256 of every other file, in the format of
  ``sha256sum`` (``cd step-N && sha256sum -c SHA256SUMS`` checks one by hand).

The directory is written under a temporary name, synced to disk and renamed, so a
``kill -9`` mid-save leaves the previous checkpoint as the latest.  A checkpoint torn
another way (the machine went down before its data reached the disk, a full disk, a file
damaged later) fails its checksums, and :func:`latest_checkpoint` falls back to the newest
one that verifies, naming the ones it skipped.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import random
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ambient_rlhf import AmbientError
from ambient_rlhf.io import writing
from ambient_rlhf.logging import get_logger
from ambient_rlhf.tensor_files import load_tensors, save_tensors  # noqa: F401  (trainers import them from here)

log = get_logger("checkpoint")

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
SUMS_FILE = "SHA256SUMS"
OLD_STATE = "state.pt"  # the pickle written by earlier versions; recognised only to refuse it
STATE_FORMAT = "ambient-state"
STATE_VERSION = 1


# ---- RNG -----------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) RNG states."""
    s = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict[str, Any]) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# ---- a nested state as safetensors + JSON --------------------------------------------------
# JSON holds the tree.  Plain JSON values stand for themselves; a dict whose keys are all
# strings (none starting with "__") is a JSON object; anything else is one tagged object:
#   {"__tensor__": name}           a tensor, stored in state.safetensors under `name`
#   {"__tuple__": [...]}           a tuple
#   {"__dict__": [[key, value]]}   a dict with other keys (the optimizer's int keys)
#   {"__float__": "nan"|"inf"|"-inf"}
#   {"__ndarray__": {"dtype", "shape", "base64"}}   a NumPy array (the NumPy RNG state)
#   {"__bytes__": base64}
_TAGS = ("__tensor__", "__tuple__", "__dict__", "__float__", "__ndarray__", "__bytes__")


def _encode(x: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, np.generic):  # np.float64, np.int64, np.bool_: their Python value
        return _encode(x.item(), path, tensors)
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        return float(x) if math.isfinite(x) else {"__float__": repr(float(x))}
    if isinstance(x, torch.Tensor):
        name = path.lstrip("/") or "/"
        while name in tensors:  # only if two dict keys print alike (1 and "1")
            name += "'"
        tensors[name] = x
        return {"__tensor__": name}
    if isinstance(x, np.ndarray):
        if x.dtype.hasobject:
            raise TypeError(f"save_state: NumPy object array at {path or '/'} cannot be stored")
        a = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<"))
        return {"__ndarray__": {"dtype": a.dtype.str, "shape": list(a.shape),
                                "base64": base64.b64encode(a.tobytes()).decode("ascii")}}
    if isinstance(x, (bytes, bytearray)):
        return {"__bytes__": base64.b64encode(bytes(x)).decode("ascii")}
    if isinstance(x, tuple):
        return {"__tuple__": [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(x)]}
    if isinstance(x, list):
        return [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(x)]
    if isinstance(x, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in x):
            return {k: _encode(v, f"{path}/{k}", tensors) for k, v in x.items()}
        pairs = []
        for k, v in x.items():
            if not isinstance(k, (str, int, float, bool, tuple, type(None))):
                raise TypeError(f"save_state: dict key {k!r} ({type(k).__name__}) at {path or '/'} cannot be stored")
            pairs.append([_encode(k, f"{path}/key", {}), _encode(v, f"{path}/{k}", tensors)])
        return {"__dict__": pairs}
    raise TypeError(f"save_state: cannot store a {type(x).__name__} at {path or '/'}; a checkpoint holds "
                    "tensors, numbers, strings, None, NumPy arrays, bytes and lists/tuples/dicts of them")


class _BadState(Exception):
    pass


def _decode(x: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, list):
        return [_decode(v, tensors, f"{path}/{i}") for i, v in enumerate(x)]
    if not isinstance(x, dict):
        raise _BadState(f"unexpected {type(x).__name__} at {path or '/'}")
    tags = [k for k in x if k.startswith("__")]
    if not tags:
        return {k: _decode(v, tensors, f"{path}/{k}") for k, v in x.items()}
    if len(x) != 1 or tags[0] not in _TAGS:
        raise _BadState(f"unknown entry {sorted(x)} at {path or '/'}")
    tag, v = tags[0], x[tags[0]]
    try:
        if tag == "__tensor__":
            if v not in tensors:
                raise _BadState(f"tensor {v!r} (at {path or '/'}) is not in {STATE_TENSORS}")
            return tensors[v]
        if tag == "__tuple__":
            return tuple(_decode(e, tensors, f"{path}/{i}") for i, e in enumerate(v))
        if tag == "__dict__":
            return {_hashable(_decode(k, {}, f"{path}/key")): _decode(e, tensors, f"{path}/{k}") for k, e in v}
        if tag == "__float__":
            if v not in ("nan", "inf", "-inf"):
                raise _BadState(f"bad float {v!r} at {path or '/'}")
            return float(v)
        if tag == "__ndarray__":
            dtype = np.dtype(v["dtype"])
            if dtype.hasobject:
                raise _BadState(f"object array at {path or '/'}")
            a = np.frombuffer(base64.b64decode(v["base64"], validate=True), dtype=dtype)
            return a.reshape(v["shape"]).astype(dtype.newbyteorder("="))
        if tag == "__bytes__":
            return base64.b64decode(v, validate=True)
    except _BadState:
        raise
    except (TypeError, ValueError, KeyError) as e:
        raise _BadState(f"malformed {tag} at {path or '/'} ({e})") from None
    raise AssertionError(tag)


def _hashable(k: Any) -> Any:
    if isinstance(k, (list, dict)):
        raise _BadState(f"unhashable dict key {k!r}")
    return k


def save_state(directory: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` as ``directory/state.safetensors`` + ``directory/state.json``.

    ``state`` may nest dicts, lists and tuples of tensors, numbers, strings, None, NumPy
    arrays and bytes; anything else is a ``TypeError`` naming where it stands."""
    d = Path(directory)
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, "", tensors)
    save_tensors(d / STATE_TENSORS, tensors)
    doc = {"format": STATE_FORMAT, "version": STATE_VERSION, "state": tree}
    (d / STATE_JSON).write_text(json.dumps(doc, allow_nan=False) + "\n", encoding="utf-8")


def load_state(ckpt_dir: str | Path) -> dict[str, Any]:
    """The dict :func:`save_state` wrote in ``ckpt_dir``, rebuilt exactly (tensors on the CPU)."""
    d = Path(ckpt_dir)
    hint = "start the run again without --resume, or resume from another checkpoint"
    if not (d / STATE_JSON).is_file() and (d / OLD_STATE).is_file():
        raise AmbientError(_old_format_message(d))
    tensors = load_tensors(d / STATE_TENSORS, hint)
    try:
        doc = json.loads((d / STATE_JSON).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AmbientError(f"{d / STATE_JSON}: missing; {hint}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise AmbientError(f"{d / STATE_JSON}: not readable JSON ({e}); {hint}") from None
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT or "state" not in doc:
        raise AmbientError(f"{d / STATE_JSON}: not a checkpoint state (no \"format\": \"{STATE_FORMAT}\"); {hint}")
    if doc.get("version") != STATE_VERSION:
        raise AmbientError(f"{d / STATE_JSON}: state version {doc.get('version')!r}, this ambient-rlhf reads "
                           f"version {STATE_VERSION}; resume with the version that wrote it, or {hint}")
    try:
        return _decode(doc["state"], tensors, "")
    except _BadState as e:
        raise AmbientError(f"{d / STATE_JSON}: {e}; {hint}") from None


def _old_format_message(d: Path) -> str:
    return (f"{d}: a checkpoint in the old format ({OLD_STATE}, a Python pickle), which ambient-rlhf no "
            "longer reads because loading a pickle can run code; start the run again without --resume "
            "(overwrite=true), or finish it with the version that wrote it")


# ---- checksums -----------------------------------------------------------------------------
def _sha256(path: Path, sync: bool = False) -> str:
    """sha256 of a file; with ``sync`` the file is also flushed to the disk (fsync)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
        if sync:
            os.fsync(f.fileno())
    return h.hexdigest()


def _sync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not possible on every platform; the data itself is synced
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_checksums(directory: str | Path) -> None:
    """Sync every file under ``directory`` to disk and write ``SHA256SUMS`` listing them."""
    d = Path(directory)
    files = sorted(p for p in d.rglob("*") if p.is_file() and p.name != SUMS_FILE)
    lines = "".join(f"{_sha256(p, sync=True)}  {p.relative_to(d).as_posix()}\n" for p in files)
    for sub in sorted({p.parent for p in files}, reverse=True):
        _sync_dir(sub)
    tmp = d / f".{SUMS_FILE}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, d / SUMS_FILE)
    _sync_dir(d)


def verify_checkpoint(ckpt_dir: str | Path) -> str | None:
    """None when every file listed in ``SHA256SUMS`` is there with its checksum (and the
    list names the state); else why not, in a few words."""
    d = Path(ckpt_dir)
    sums = d / SUMS_FILE
    if not sums.is_file():
        if (d / OLD_STATE).is_file():
            return f"old pickle format ({OLD_STATE})"
        return f"no {SUMS_FILE} (the save did not finish)"
    try:
        lines = sums.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        return f"{SUMS_FILE} unreadable ({e})"
    listed = {}
    for i, line in enumerate(lines, 1):
        digest, sep, name = line.partition("  ")
        if not sep or not re.fullmatch(r"[0-9a-f]{64}", digest) or not name:
            return f"{SUMS_FILE}:{i} is not '<sha256>  <file>'"
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts:
            return f"{SUMS_FILE}:{i} names a file outside the checkpoint ({name})"
        listed[name] = digest
    for need in (STATE_JSON, STATE_TENSORS):
        if need not in listed:
            return f"{SUMS_FILE} does not list {need}"
    for name, digest in listed.items():
        p = d / name
        if not p.is_file():
            return f"{name} is missing"
        if _sha256(p) != digest:
            return f"{name} does not match its checksum (truncated or changed after it was written)"
    return None


# ---- checkpoint directories ----------------------------------------------------------------
_STEP_RE = re.compile(r"^step-(\d+)$")


def _step_dirs(out_dir: str | Path) -> list[tuple[int, Path]]:
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest checkpoint that verifies against its ``SHA256SUMS``, or None.

    Newer ones that do not verify are skipped with a warning naming each and why.  Raises
    :class:`AmbientError` when the only checkpoints are in the old pickle format."""
    skipped, old = [], []
    for _, d in reversed(_step_dirs(out_dir)):
        why = verify_checkpoint(d)
        if why is None:
            if skipped:
                log.warning("skipping checkpoint(s) that do not verify: %s; the newest that does is %s",
                            "; ".join(f"{s} ({w})" for s, w in skipped), d)
            return d
        skipped.append((d, why))
        if not (d / SUMS_FILE).is_file() and (d / OLD_STATE).is_file():
            old.append(d)
    if old:
        raise AmbientError(_old_format_message(old[0]))
    if skipped:
        log.warning("no checkpoint in %s verifies: %s", Path(out_dir) / "checkpoints",
                    "; ".join(f"{s} ({w})" for s, w in skipped))
    return None


def save_checkpoint(out_dir: str | Path, step: int, state: dict[str, Any], save_models=None, keep: int = 2) -> Path:
    """Write ``state`` (plus whatever ``save_models(tmp_dir)`` writes) as checkpoint ``step``.

    Keeps the newest ``keep`` checkpoints (all when ``keep <= 0``).  Checkpoints of later
    steps are removed: they are left from before a resume from an earlier checkpoint (the
    resume skipped them because they did not verify)."""
    root = Path(out_dir) / "checkpoints"
    final = root / f"step-{step}"
    tmp = root / f".step-{step}.tmp-{uuid.uuid4().hex[:6]}"
    with writing(final, "a checkpoint"):
        root.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        if save_models is not None:
            save_models(tmp)
        save_state(tmp, state)
        write_checksums(tmp)  # last: a directory with a valid SHA256SUMS is complete
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _sync_dir(root)
    dirs = _step_dirs(out_dir)
    for s, d in dirs:
        if s > step:
            log.warning("removing %s, a later checkpoint left from before the resume", d)
            shutil.rmtree(d, ignore_errors=True)
    kept = [d for s, d in dirs if s <= step]
    for old in kept[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step-*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final
