"""Output directories and manifests shared by every stage.

Every stage writes its directory through :func:`atomic_dir` (a temporary sibling renamed
into place on success, so a failed run never leaves a complete-looking output) and
records a ``manifest.json`` with :func:`write_manifest`: inputs with hashes, the resolved
config, counts, versions and timings.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from ambient_rlhf import AmbientError, __version__


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def describe_input(path: str | Path) -> dict[str, Any]:
    """Identity of an input: a file's sha256, or for a directory the sha256 of its manifest
    (when it has one) or of its file listing (names and sizes)."""
    p = Path(path)
    if p.is_file():
        return {"path": str(p), "sha256": sha256_file(p), "bytes": p.stat().st_size}
    if p.is_dir():
        m = p / "manifest.json"
        if m.is_file():
            return {"path": str(p), "manifest_sha256": sha256_file(m)}
        h = hashlib.sha256()
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            h.update(f"{f.relative_to(p)}:{f.stat().st_size}\n".encode())
        return {"path": str(p), "listing_sha256": h.hexdigest()}
    return {"path": str(p), "missing": True}


def versions() -> dict[str, str]:
    out = {"ambient_rlhf": __version__, "python": platform.python_version()}
    for mod in ("torch", "transformers", "peft", "accelerate", "datasets", "numpy", "pandas", "pyarrow"):
        m = sys.modules.get(mod)
        if m is not None:
            out[mod] = getattr(m, "__version__", "?")
    return out


# errors that mean "this place cannot be written": a read-only or full disk, no permission
_WRITE_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EFBIG, errno.ENOTDIR}


def write_error(e: OSError, what: str, where: str | Path) -> AmbientError:
    """A one-line AmbientError for an OSError met while writing ``what`` into ``where``."""
    full = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    hint = "free some space or choose another --out" if full else "choose a writable --out"
    name = f" ({e.filename})" if e.filename and str(e.filename) != str(where) else ""
    return AmbientError(f"{where}: cannot write {what}: {e.strerror or e}{name}; {hint}")


_RUST_IO = re.compile(r"\(os error (\d+)\)")  # how safetensors (Rust) reports an I/O error


def _as_write_error(e: Exception) -> OSError | None:
    """``e`` as an OSError of an unwritable place, or None.  safetensors raises its own
    error type for these; the ``(os error N)`` in its message counts too."""
    if isinstance(e, OSError):
        return e if e.errno in _WRITE_ERRNOS else None
    m = _RUST_IO.search(str(e))
    if m is None or int(m.group(1)) not in _WRITE_ERRNOS:
        return None
    code = int(m.group(1))
    return OSError(code, os.strerror(code))


@contextlib.contextmanager
def writing(where: str | Path, what: str) -> Iterator[None]:
    """Turn the error of a read-only, full or forbidden place met in the block into a
    one-line AmbientError that says what was being written and where (exit code 2)."""
    try:
        yield
    except Exception as e:
        err = _as_write_error(e)
        if err is None:
            raise
        raise write_error(err, what, where) from None


def write_manifest(
    out_dir: str | Path,
    stage: str,
    config: dict[str, Any] | None = None,
    inputs: list[str | Path] | None = None,
    counts: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Write ``out_dir/manifest.json`` and return it; in a model stage's directory also
    the model card ``README.md`` (:mod:`ambient_rlhf.modelcard`)."""
    m: dict[str, Any] = {
        "stage": stage,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": sys.argv,
        "versions": versions(),
        "config": config or {},
        "inputs": [describe_input(i) for i in (inputs or [])],
        "counts": counts or {},
    }
    m.update(extra)
    path = Path(out_dir) / "manifest.json"
    with writing(path, "the manifest"):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(m, indent=2, default=str) + "\n")
        os.replace(tmp, path)
    from ambient_rlhf.modelcard import MODEL_STAGES, write_model_card

    if stage in MODEL_STAGES:  # a model directory: its README.md, from the files just written
        with writing(Path(out_dir) / "README.md", "the model card"):
            write_model_card(out_dir)
    return m


@contextlib.contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``out`` only if the block succeeds.

    An existing ``out`` is an error unless ``overwrite`` (then it is replaced at the end).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise AmbientError(f"{out}: output directory exists; pass --overwrite or choose another --out")
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    with writing(out, "the output directory"):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    try:
        yield tmp
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        # a full or read-only disk under the output; other errors (an unreadable input) pass on
        err = _as_write_error(e)
        if err is not None and (err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
                                or str(err.filename or "").startswith(str(tmp))):
            raise write_error(err, "the output", out) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    path = Path(path)
    with writing(path, "a JSON file"):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
        os.replace(tmp, path)
