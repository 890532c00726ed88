"""Sentence embeddings from a causal LM: the mean of the last hidden states over the real
tokens, L2-normalised -- the dense re-ranker of ``ambient data acts`` (``rerank=true``).

No separate embedding model: the project's default model (SmolLM2-135M-Instruct) is already
on the machine, and mean pooling of a decoder's states is a plain, if modest, baseline."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ambient_rlhf.models.load import default_device, load_causal_lm, load_tokenizer, resolve_model


class MeanPooledEmbedder:
    """``embed(texts) -> (n, hidden)`` unit vectors; ``max_tokens`` per text (cut on the right)."""

    def __init__(self, model: str = "default", max_tokens: int = 256, batch_size: int = 16):
        path = resolve_model(model)
        self.tok = load_tokenizer(path, padding_side="right")
        self.model = load_causal_lm(path, device=default_device())
        self.model.eval()
        self.max_tokens, self.batch_size = max_tokens, batch_size

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        dev = next(self.model.parameters()).device
        for i in range(0, len(texts), self.batch_size):
            enc = self.tok(list(texts[i:i + self.batch_size]), return_tensors="pt", padding=True,
                           truncation=True, max_length=self.max_tokens).to(dev)
            h = self.model(**enc, output_hidden_states=True).hidden_states[-1]  # (B, T, H)
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)  # (B, T, 1)
            v = (h * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, H)
            out.append(torch.nn.functional.normalize(v.float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.hidden_size), np.float32)

    def reranker(self) -> Callable[[str, list[str]], np.ndarray]:
        """``rerank(query, texts) -> cosine of each text with the query``."""
        def rerank(query: str, texts: list[str]) -> np.ndarray:
            q = self.embed([query])[0]
            return self.embed(texts) @ q
        return rerank
