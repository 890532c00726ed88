"""Backbone features of reward-model texts, cached on disk.

A head-only reward model (``train_layers=0``) reads one feature per text: the backbone's
hidden state at the last real token (or, with ``pooling=mean``, the mean of the response
tokens' states: another file, keys that include the prompt length).  The backbone never
changes, so the feature can be computed once and reused by every reward model of that
backbone (another objective, another seed) and by their evaluation."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import MutableMapping
from pathlib import Path

import numpy as np
import torch

from ambient_rlhf.logging import get_logger

log = get_logger("rm")


def text_key(ids: list[int]) -> str:
    return hashlib.sha1(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()


class FeatureMap(MutableMapping):
    """Features by key: the entries of the cache file read on demand from the file,
    memory-mapped (safetensors' ``safe_open``), the new ones held in memory until saved.

    Opening a cache costs nothing in proportion to its size, and a run holds in memory only
    the features it reads (the reward trainer keeps those of its own texts)."""

    def __init__(self):
        self._file = None  # safe_open handle of the file on disk (None: nothing on disk)
        self._disk: frozenset[str] = frozenset()
        self._new: dict[str, torch.Tensor] = {}

    def attach(self, handle) -> None:
        """Read the entries not held in memory from ``handle`` (a safe_open of the file)."""
        self._file = handle
        self._disk = frozenset(handle.keys()) if handle is not None else frozenset()

    @property
    def in_memory(self) -> int:
        """How many entries are held in memory (added since the last save)."""
        return len(self._new)

    def spec(self, key: str) -> tuple[str, tuple[int, ...]]:
        """``(safetensors dtype, shape)`` of an entry, without reading it."""
        from ambient_rlhf.tensor_files import safetensors_dtype

        if key in self._new:
            t = self._new[key]
            return safetensors_dtype(t), tuple(t.shape)
        sl = self._file.get_slice(key)
        return sl.get_dtype(), tuple(sl.get_shape())

    def __getitem__(self, key: str) -> torch.Tensor:
        if key in self._new:
            return self._new[key]
        if key in self._disk:
            return self._file.get_tensor(key)
        raise KeyError(key)

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        self._new[key] = value

    def __delitem__(self, key: str) -> None:
        raise TypeError("feature cache entries are not deleted (delete the file to start over)")

    def __contains__(self, key) -> bool:
        return key in self._new or key in self._disk

    def __iter__(self):
        yield from self._new
        yield from (k for k in sorted(self._disk) if k not in self._new)

    def __len__(self) -> int:
        return len(self._new) + sum(1 for k in self._disk if k not in self._new)


class FeatureStore:
    """Backbone last-token features (and response log-likelihoods) on disk, per model
    (a backbone cut to its first ``layers`` layers is another model).

    Two files per backbone, named by its fingerprint: ``<dir>/<fingerprint>.features.safetensors``
    (one ``(d,)`` tensor per text, named by the key) and ``<dir>/<fingerprint>.loglik.json``
    (``{key: [sum, mean]}``); the key is the sha1 of the token ids (plus ``:<prompt length>``
    for log-likelihoods).  Neither format can carry code.  ``features`` is a
    :class:`FeatureMap`: the file is memory-mapped and an entry read when asked for, so a
    cache of millions of texts opens at once and costs memory only for what a run reads.
    Saved by merging into what is on disk, one entry at a time (temp + rename, each file),
    so runs that share a directory add to each other's entries and a save needs no more
    memory than one feature.  It is a cache: a file that cannot be read (torn by a killed
    run, or not what it claims to be) is ignored with a warning and replaced at the next
    save; the ``<fingerprint>.pt`` pickle of earlier versions is never read."""

    def __init__(self, directory: str | Path, model_path: str, layers: int = 0, pooling: str = "last"):
        from ambient_rlhf.io import describe_input

        who = describe_input(model_path)
        if layers:  # the first ``layers`` layers of that backbone: other features, another file
            who["layers"] = int(layers)
        self.pooling = pooling
        if pooling != "last":  # mean-pooled response states: other features, another file
            who["pooling"] = pooling
        ident = json.dumps(who, sort_keys=True)
        stem = hashlib.sha256(ident.encode()).hexdigest()[:16]
        self.features_path = Path(directory) / f"{stem}.features.safetensors"
        self.loglik_path = Path(directory) / f"{stem}.loglik.json"
        old = Path(directory) / f"{stem}.pt"
        if old.is_file():
            log.warning("%s: feature cache in the old pickle format, which is not read (loading a pickle can "
                        "run code); the features are computed again into %s; delete the old file",
                        old, self.features_path.name)
        self.features = FeatureMap()
        self.features.attach(self._open_features())
        self.loglik: dict[str, tuple[float, float]] = {}
        self._merge_loglik()

    def key(self, ids: list[int], prompt_len: int) -> str:
        """The feature key of a text: the sha1 of its ids; with mean pooling also the prompt
        length (the same ids split elsewhere pool other tokens)."""
        k = text_key(ids)
        return k if self.pooling == "last" else f"{k}:{int(prompt_len)}"

    def _open_features(self):
        """A safe_open handle of the features file (memory-mapped), or None when there is
        none or it cannot be read (warned)."""
        from safetensors import safe_open

        if not self.features_path.is_file():
            return None
        try:
            handle = safe_open(str(self.features_path), framework="pt", device="cpu")
            handle.keys()
            return handle
        except Exception as e:  # safetensors raises its own error type
            log.warning("%s: unreadable feature cache (%s); ignoring it", self.features_path, e)
            return None

    def _merge_loglik(self) -> None:
        """Add the log-likelihoods on disk that this store does not hold yet."""
        if self.loglik_path.is_file():
            try:
                ll = json.loads(self.loglik_path.read_text(encoding="utf-8"))
                ll = {str(k): (float(v[0]), float(v[1])) for k, v in ll.items()}
            except Exception as e:  # torn JSON, or values of the wrong shape
                log.warning("%s: unreadable log-likelihood cache (%s); ignoring it", self.loglik_path, e)
                ll = {}
            for k, v in ll.items():
                self.loglik.setdefault(k, v)

    def save(self) -> None:
        """Write this store's entries merged with what is on disk now (another run may have
        added to it since this one opened it; this store's own entries win), one feature
        at a time; afterwards every entry is read from the new file."""
        import uuid

        from ambient_rlhf.tensor_files import save_tensors_streaming

        self.features_path.parent.mkdir(parents=True, exist_ok=True)
        disk = self._open_features()
        other = FeatureMap()
        other.attach(disk)
        mine = self.features
        entries = [(k, *mine.spec(k)) for k in mine]
        entries += [(k, *other.spec(k)) for k in other if k not in mine]  # other holds only what is on disk
        tag = uuid.uuid4().hex[:6]
        tmp = self.features_path.with_name(f".{self.features_path.name}.{tag}")
        save_tensors_streaming(tmp, entries, lambda k: mine[k] if k in mine else other[k])
        # let go of the old file's maps before it is replaced (some systems refuse otherwise)
        del entries, disk
        mine.attach(None)
        other.attach(None)
        os.replace(tmp, self.features_path)
        self.features = FeatureMap()
        self.features.attach(self._open_features())
        self._merge_loglik()
        tmp = self.loglik_path.with_name(f".{self.loglik_path.name}.{tag}")
        tmp.write_text(json.dumps({k: list(v) for k, v in self.loglik.items()}), encoding="utf-8")
        os.replace(tmp, self.loglik_path)
