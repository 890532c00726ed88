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
from pathlib import Path

import numpy as np
import torch

from ambient_rlhf.logging import get_logger

log = get_logger("rm")


def text_key(ids: list[int]) -> str:
    return hashlib.sha1(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()


class FeatureStore:
    """Backbone last-token features (and response log-likelihoods) on disk, per model
    (a backbone cut to its first ``layers`` layers is another model).

    Two files per backbone, named by its fingerprint: ``<dir>/<fingerprint>.features.safetensors``
    (one ``(d,)`` tensor per text, named by the key) and ``<dir>/<fingerprint>.loglik.json``
    (``{key: [sum, mean]}``); the key is the sha1 of the token ids (plus ``:<prompt length>``
    for log-likelihoods).  Neither format can carry code.  Saved by merging into what is on
    disk (temp + rename, each file), so runs that share a directory add to each other's
    entries.  It is a cache: a file that cannot be read (torn by a killed run, or not what
    it claims to be) is ignored with a warning and replaced at the next save; the
    ``<fingerprint>.pt`` pickle of earlier versions is never read."""

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
        self.features: dict[str, torch.Tensor] = {}
        self.loglik: dict[str, tuple[float, float]] = {}
        self._merge_from_disk()

    def key(self, ids: list[int], prompt_len: int) -> str:
        """The feature key of a text: the sha1 of its ids; with mean pooling also the prompt
        length (the same ids split elsewhere pool other tokens)."""
        k = text_key(ids)
        return k if self.pooling == "last" else f"{k}:{int(prompt_len)}"

    def _merge_from_disk(self) -> None:
        """Add the entries on disk that this store does not hold yet."""
        from safetensors.torch import load_file

        if self.features_path.is_file():
            try:
                feats = load_file(str(self.features_path), device="cpu")
            except Exception as e:  # safetensors raises its own error type
                log.warning("%s: unreadable feature cache (%s); ignoring it", self.features_path, e)
                feats = {}
            for k, v in feats.items():
                self.features.setdefault(k, v)
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
        import uuid

        from ambient_rlhf.checkpoint import save_tensors

        self.features_path.parent.mkdir(parents=True, exist_ok=True)
        self._merge_from_disk()
        tag = uuid.uuid4().hex[:6]
        tmp = self.features_path.with_name(f".{self.features_path.name}.{tag}")
        save_tensors(tmp, self.features)
        os.replace(tmp, self.features_path)
        tmp = self.loglik_path.with_name(f".{self.loglik_path.name}.{tag}")
        tmp.write_text(json.dumps({k: list(v) for k, v in self.loglik.items()}), encoding="utf-8")
        os.replace(tmp, self.loglik_path)
