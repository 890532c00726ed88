"""Backbone features of reward-model texts, cached on disk.

A head-only reward model (``train_layers=0``) reads one feature per text: the backbone's
hidden state at the last real token.  The backbone never changes, so the feature can be
computed once and reused by every reward model of that backbone (another objective,
another seed) and by their evaluation."""

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
    """Backbone last-token features (and response log-likelihoods) on disk, per model.

    One file per backbone, ``<dir>/<fingerprint>.pt`` = ``{"features": {key: (d,)},
    "loglik": {key: (sum, mean)}}``; the key is the sha1 of the token ids (plus the prompt
    length for log-likelihoods).  Saved by merging into what is on disk (temp + rename),
    so runs that share a directory add to each other's entries."""

    def __init__(self, directory: str | Path, model_path: str):
        from ambient_rlhf.io import describe_input

        ident = json.dumps(describe_input(model_path), sort_keys=True)
        self.path = Path(directory) / (hashlib.sha256(ident.encode()).hexdigest()[:16] + ".pt")
        self.features: dict[str, torch.Tensor] = {}
        self.loglik: dict[str, tuple[float, float]] = {}
        self._load_into(self)

    def _load_into(self, target: "FeatureStore") -> None:
        if self.path.is_file():
            try:
                d = torch.load(self.path, map_location="cpu", weights_only=False)
            except Exception as e:  # a torn file from a killed run: start over
                log.warning("%s: unreadable feature cache (%s); ignoring it", self.path, e)
                return
            for k, v in d.get("features", {}).items():
                target.features.setdefault(k, v)
            for k, v in d.get("loglik", {}).items():
                target.loglik.setdefault(k, v)

    def save(self) -> None:
        import uuid

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._load_into(self)
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:6]}")
        torch.save({"features": self.features, "loglik": self.loglik}, tmp)
        os.replace(tmp, self.path)


