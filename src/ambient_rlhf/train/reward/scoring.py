"""Scoring text rows through the part of a reward model that trains (head on cached
features, top layers on cached hidden states, or the whole model); the objectives'
losses on a batch of scored rows are :mod:`.objective`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ambient_rlhf.logging import progress
from ambient_rlhf.models.features import FeatureStore
from ambient_rlhf.models.kv import select_rows
from ambient_rlhf.models.shared_bottom import TopLayers, states_into
from ambient_rlhf.models.tokenize import pad_batch
from ambient_rlhf.models.reward_inputs import TextTable
from ambient_rlhf.train.reward.batching import shard_rows
from ambient_rlhf.train.reward.units import Unit

if TYPE_CHECKING:
    from ambient_rlhf.train.reward import objective


# ---- scoring: the trained part of the network ---------------------------------------------
def _padded(seqs, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(values, mask)`` on ``device`` (``models.tokenize.pad_batch``)."""
    values, mask = pad_batch(seqs, 0, "right")
    return values.to(device), mask.to(device)


class HeadOnFeatures(nn.Module):
    """Head-only model on cached pooled features: (n, d) -> (n, n_out).

    With :meth:`standardize` the head reads ``(x - mean) / std`` (constants from the
    training features), so that weight decay acts like an L2 penalty on equally scaled
    inputs (a backbone's states have a few dimensions hundreds of times larger than the
    rest); :meth:`fold` then moves the constants into the head -- ``w' = w / std``,
    ``b' = b - w' . mean`` -- which is what is saved: the same function of raw features."""

    def __init__(self, head: nn.Linear):
        super().__init__()
        self.head = head
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None

    def standardize(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean, self.std = mean, std.clamp(min=1e-6)

    @torch.no_grad()
    def fold(self) -> None:
        if self.mean is None:
            return
        w = self.head.weight.double() / self.std.double().to(self.head.weight.device)  # (n_out, d)
        self.head.bias.copy_((self.head.bias.double() - w @ self.mean.double().to(w.device)).to(self.head.bias.dtype))
        self.head.weight.copy_(w.to(self.head.weight.dtype))
        self.mean = self.std = None

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if self.mean is not None:
            feats = (feats - self.mean.to(feats.device, feats.dtype)) / self.std.to(feats.device, feats.dtype)
        return self.head(feats)


def feature_moments(feats: list[torch.Tensor], gather=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (population) standard deviation of features, float64 sums; ``gather``
    (e.g. accelerate's ``gather_object``) combines the sums of several processes so that
    every process standardises alike."""
    x = torch.stack(feats).double() if feats else torch.zeros(0, 1, dtype=torch.float64)
    parts = [(x.shape[0], x.sum(0), (x * x).sum(0))]
    if gather is not None:
        parts = [p for p in gather(parts) if p[0] > 0]
    n = sum(p[0] for p in parts)
    s1 = sum(p[1] for p in parts)
    s2 = sum(p[2] for p in parts)
    mean = s1 / n
    var = (s2 / n - mean * mean).clamp(min=0.0)
    return mean.float(), var.sqrt().float()


def shared_prompt_states(rm, table: TextTable, rows: list[int], device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """:meth:`ScalarHeadModel.shared_prompt_states` of the text rows ``rows``: the
    response tokens' last hidden states, each distinct prompt run once, or None."""
    return rm.shared_prompt_states([table.ids[r] for r in rows], [table.prompt_len[r] for r in rows])


def shared_prompt_outputs(rm, table: TextTable, rows: list[int], device) -> torch.Tensor:
    """Head outputs of ``rows`` through the whole model (pooled as ``rm`` pools), each
    distinct prompt run once (:func:`shared_prompt_states`).  Same numbers as scoring each
    full sequence (a test checks outputs and gradients), for a fraction of the prompt
    compute when a thread's responses share a batch.  Returns (len(rows), n_outputs)."""
    got = rm.shared_prompt_outputs([table.ids[r] for r in rows], [table.prompt_len[r] for r in rows])
    if got is None:  # nothing shared: one plain pass
        ids, mask = _padded([table.ids[r] for r in rows], device)
        return rm(ids, mask, torch.tensor([table.prompt_len[r] for r in rows], device=device))
    return got


class Scorer:
    """Head outputs of text rows through the part of the network that trains.

    ``mode``: ``head`` (cached last-token features), ``top`` (cached hidden states into
    the top layers) or ``full`` (token ids through the whole model)."""

    def __init__(self, rm, table: TextTable, mode: str, n_top: int, device, pad_id: int,
                 store: FeatureStore | None = None):
        self.rm, self.table, self.mode, self.n_top, self.device, self.pad_id = rm, table, mode, n_top, device, pad_id
        self.cache: dict[int, torch.Tensor] = {}
        self.store = store if mode == "head" else None
        self.share_prompts = False
        self.save_seconds = 120.0  # feature store: write new features at least this often
        self.module: nn.Module = (HeadOnFeatures(rm.head) if mode == "head" else
                                  TopLayers(rm, n_top) if mode == "top" else rm)

    def _ids(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return _padded([self.table.ids[r] for r in rows], self.device)

    def _prompt_lens(self, rows: list[int]) -> torch.Tensor:
        return torch.tensor([self.table.prompt_len[r] for r in rows], device=self.device)

    def _key(self, r: int) -> str:
        return self.store.key(self.table.ids[r], self.table.prompt_len[r])

    @torch.no_grad()
    def _frozen(self, rows: list[int]) -> list[torch.Tensor]:
        """Output of the frozen bottom for each row (CPU float32)."""
        from ambient_rlhf.models.bodies import body_of

        if self.mode == "head":
            got = shared_prompt_states(self.rm, self.table, rows, self.device) if self.share_prompts else None
            if got is not None:  # the response tokens' states alone: the prompt is 0 tokens of them
                h, mask = got
                pooled = self.rm.pool(h, mask, torch.zeros(len(rows), dtype=torch.long, device=self.device))
            else:
                ids, mask = self._ids(rows)
                h = self.rm.hidden_states(ids, mask)  # (n, T, d)
                pooled = self.rm.pool(h, mask, self._prompt_lens(rows))  # last token, or mean of the response
            return [x.float().cpu() for x in pooled]
        body = body_of(self.rm.lm)
        layer = body.layers[len(body.layers) - self.n_top]  # the states entering it: where the passes stop

        shared = self._shared_prompts(rows) if self.share_prompts and self.module.can_share_prompts else None
        if shared is not None:  # each distinct prompt once, its responses on top of its keys/values
            from transformers import DynamicCache

            from ambient_rlhf.models.kv import cache_kw

            t, inverse, first = self.table, *shared
            p_ids, p_mask = _padded([t.ids[r][: t.prompt_len[r]] for r in first], self.device)  # (G, Tp)
            r_ids, r_mask = _padded([t.ids[r][t.prompt_len[r]:] for r in rows], self.device)  # (B, Tr)
            g = torch.tensor(inverse, device=self.device)
            cache = DynamicCache(config=body.config)  # filled below the top layers, where the pass stops
            p_h = states_into(layer, lambda: body(input_ids=p_ids, attention_mask=p_mask, use_cache=True,
                                                  position_ids=(p_mask.cumsum(-1) - 1).clamp(min=0),
                                                  **cache_kw(body, cache)))
            select_rows(cache, g)
            p_len = p_mask.sum(1)[g]  # (B,)
            r_pos = p_len.unsqueeze(1) + torch.arange(r_ids.shape[1], device=self.device).unsqueeze(0)
            r_h = states_into(layer, lambda: body(input_ids=r_ids, attention_mask=torch.cat([p_mask[g], r_mask], 1),
                                                  position_ids=r_pos, use_cache=True, **cache_kw(body, cache)))
            return [torch.cat([p_h[gi, : int(p_len[b])], r_h[b, : int(r_mask[b].sum())]]).float().cpu()
                    for b, gi in enumerate(inverse)]
        ids, mask = self._ids(rows)
        h = states_into(layer, lambda: self.rm.hidden_states(ids, mask))
        lens = mask.sum(1).tolist()
        return [h[i, : lens[i]].float().cpu() for i in range(len(rows))]

    def _shared_prompts(self, rows: list[int]) -> tuple[list[int], list[int]] | None:
        """``(inverse, first)``: each row's distinct prompt and each prompt's first row;
        None when no two rows share a prompt or a prompt or response is empty."""
        t = self.table
        groups: dict[tuple[int, ...], int] = {}
        inverse = [groups.setdefault(tuple(t.ids[r][: t.prompt_len[r]]), len(groups)) for r in rows]
        if len(groups) == len(rows) or any(t.prompt_len[r] == 0 or len(t.ids[r]) <= t.prompt_len[r] for r in rows):
            return None
        first: dict[int, int] = {}
        for r, g in zip(rows, inverse):
            first.setdefault(g, r)
        return inverse, [first[g] for g in range(len(groups))]

    def prepare(self, rows: list[int], batch_size: int, desc: str = "caching features", save: bool = True) -> int:
        """Fill the cache for ``rows`` (length-sorted batches, so little padding); return
        how many texts were computed.  ``save``: write new features to the feature store
        as they come (off for all but one of several processes, which save in turn)."""
        if self.mode == "full":
            return 0
        if self.store is not None:
            for r in rows:
                f = self.store.features.get(self._key(r))
                if f is not None:
                    self.cache[r] = f
        todo = sorted({r for r in rows if r not in self.cache}, key=lambda r: len(self.table.ids[r]))
        if self.share_prompts:
            # a thread's responses in the same batches, so their prompt runs once per batch:
            # by prompt length, then prompt, then length (little padding on either side)
            t = self.table
            todo.sort(key=lambda r: (t.prompt_len[r], t.ids[r][: t.prompt_len[r]], len(t.ids[r])))
        bar = progress(total=len(todo), desc=desc, unit="text")
        last_save = time.monotonic()
        for i in range(0, len(todo), batch_size):
            chunk = todo[i:i + batch_size]
            for r, f in zip(chunk, self._frozen(chunk)):
                self.cache[r] = f
                if self.store is not None:
                    self.store.features[self._key(r)] = f
            bar.update(len(chunk))
            if save and self.store is not None and time.monotonic() - last_save > self.save_seconds:
                self.store.save()  # a killed run keeps all but the last few minutes of its work
                last_save = time.monotonic()
        bar.close()
        if save and self.store is not None and todo:
            self.store.save()
        return len(todo)

    def outputs(self, rows: list[int]) -> torch.Tensor:
        """(len(rows), n_outputs) head outputs; differentiable in the trained part."""
        if self.mode == "head":
            return self.module(torch.stack([self.cache[r] for r in rows]).to(self.device))
        if self.mode == "top":
            if self.share_prompts:
                got = self._top_shared(rows)
                if got is not None:
                    return got
            h, mask = _padded([self.cache[r] for r in rows], self.device)
            return self.module(h, mask, self._prompt_lens(rows))
        if self.share_prompts:
            return shared_prompt_outputs(self.rm, self.table, rows, self.device)
        ids, mask = self._ids(rows)
        return self.module(ids, mask, self._prompt_lens(rows))

    def _top_shared(self, rows: list[int]) -> torch.Tensor | None:
        """Top-layer outputs with each distinct prompt of ``rows`` run once
        (:meth:`TopLayers.forward_shared`); None when no two rows share a prompt or a
        prompt or response is empty (then the plain pass is as cheap)."""
        shared = self._shared_prompts(rows)
        if shared is None:
            return None
        t, (inverse, first) = self.table, shared
        p_h, p_mask = _padded([self.cache[r][: t.prompt_len[r]] for r in first], self.device)
        r_h, r_mask = _padded([self.cache[r][t.prompt_len[r]:] for r in rows], self.device)
        return self.module.forward_shared(p_h, p_mask, torch.tensor(inverse, device=self.device), r_h, r_mask)

    def check(self, rows: list[int]) -> float:
        """Largest difference between the cached path and the plain full model."""
        with torch.no_grad():
            ids, mask = self._ids(rows)
            ref = self.rm(ids, mask, self._prompt_lens(rows))
            return float((self.outputs(rows) - ref).abs().max())


class ScoreRows(nn.Module):
    """:meth:`Scorer.outputs` as one module whose forward scores text rows, so that
    ``accelerator.prepare`` puts DDP around the whole computation of a training step (the
    shared-prompt path calls the body and the head directly; called from outside a DDP
    wrapper, they would skip the gradient sync).  It registers the trained module only,
    so DDP sees exactly the trained parameters.  Evaluation calls the scorer directly (no
    DDP: a process may score texts the others do not)."""

    def __init__(self, scorer: Scorer, covariates: "objective.CovariateModel | None" = None):
        super().__init__()
        self.trained = scorer.module
        self.covariates = covariates  # registered: DDP syncs its gradient too
        self.__dict__["scorer"] = scorer  # not a submodule

    def forward(self, rows: list[int], cov: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(len(rows), n_outputs) head outputs, and ``g`` of the (n, k) covariates ``cov``
        (None without a covariate model)."""
        g = self.covariates(cov) if self.covariates is not None and cov is not None else None
        return self.scorer.outputs(rows), g


@torch.no_grad()
def raw_rewards(scorer: Scorer, rows: list[int], batch_size: int, accelerator=None) -> dict[int, float]:
    """Unnormalised reward of each row.  With several processes (``accelerator``) each
    scores its :func:`shard_rows` share and every process receives all the rewards."""
    out: dict[int, float] = {}
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    rows = shard_rows(scorer.table, rows, rank, world)
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        r = scorer.rm.raw_reward(scorer.outputs(chunk).float())
        out.update(zip(chunk, r.tolist()))
    if world > 1:
        from accelerate.utils import gather_object

        out = dict(gather_object(list(out.items())))
    return out


def pair_accuracy(scorer: Scorer, pairs: list[Unit], batch_size: int, accelerator=None) -> float:
    r = raw_rewards(scorer, [x for u in pairs for x in u.rows], batch_size, accelerator)
    if not pairs:
        return float("nan")
    return float(np.mean([1.0 if r[u.rows[0]] > r[u.rows[1]] else 0.5 if r[u.rows[0]] == r[u.rows[1]] else 0.0
                          for u in pairs]))
