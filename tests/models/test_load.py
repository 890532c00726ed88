"""Model names resolve offline; tiny-random is what the docs say; clear errors."""

from __future__ import annotations

import pytest

from ambient_rlhf import AmbientError
from ambient_rlhf.models.load import load_causal_lm, resolve_model


def test_tiny_random_shape_and_pad(tiny_model_path):
    m = load_causal_lm("tiny-random")
    assert resolve_model("tiny-random") == tiny_model_path
    assert (m.config.num_hidden_layers, m.config.hidden_size) == (2, 64)
    assert m.config.pad_token_id == 0 and m.config.eos_token_id == 2
    assert not m.training or all(getattr(x, "p", 0.0) == 0.0 for x in m.modules())


def test_bad_model_names(tmp_path):
    with pytest.raises(AmbientError, match="not a model directory"):
        resolve_model(str(tmp_path))
    with pytest.raises(AmbientError, match="model directory not found"):
        resolve_model(str(tmp_path / "missing"))
