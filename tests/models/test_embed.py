"""Mean-pooled embeddings (the dense re-ranker of ``ambient data acts``), on the tiny model."""

from __future__ import annotations

import numpy as np
import torch

from ambient_rlhf.models.embed import MeanPooledEmbedder


def test_mean_pooling_by_hand_and_padding_invariance(tiny_model_path):
    e = MeanPooledEmbedder(tiny_model_path, batch_size=4)
    texts = ["a short one", "a much longer text with several more words in it"]
    batch = e.embed(texts)  # the short text is right-padded here
    alone = e.embed(texts[:1])
    np.testing.assert_allclose(batch[0], alone[0], atol=1e-5)
    # by hand: mean of the last hidden states over the tokens, then unit length
    enc = e.tok(texts[1], return_tensors="pt")
    with torch.no_grad():
        h = e.model(**enc, output_hidden_states=True).hidden_states[-1][0]  # (T, H)
    v = h.mean(0)
    np.testing.assert_allclose(batch[1], (v / v.norm()).numpy(), atol=1e-5)
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)


def test_reranker_is_cosine_with_the_query(tiny_model_path):
    e = MeanPooledEmbedder(tiny_model_path)
    rerank = e.reranker()
    sims = rerank("tl dr summary", ["tl dr summary", "something else entirely"])
    assert sims.shape == (2,) and sims[0] == np.float32(sims[0])
    assert abs(sims[0] - 1.0) < 1e-5  # a text against itself
    q, t = e.embed(["tl dr summary"])[0], e.embed(["something else entirely"])[0]
    assert abs(sims[1] - float(q @ t)) < 1e-5
