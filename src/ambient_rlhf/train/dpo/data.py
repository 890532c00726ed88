"""DPO pairs from a data directory, their weights, tokens and batches, the cached
reference log-probs, and the evaluation."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ambient_rlhf import AmbientError
from ambient_rlhf.data import schema
from ambient_rlhf.data.tables import read_table
from ambient_rlhf.logging import get_logger, progress
from ambient_rlhf.rl.dpo_losses import dpo_loss, ranking_pair_weights
from ambient_rlhf.train.common import all_sum
from ambient_rlhf.train.dpo.config import DPOConfig

log = get_logger("dpo")

REFERENCE_FILE = "reference_logps.safetensors"
"""The cached reference log-probs in ``out``: tensors ``train`` and ``valid`` (N, 2) =
(chosen, rejected) summed response log-probs, and the fingerprint of the pairs and model
they belong to in the header."""


@dataclass
class Pair:
    """One preference as written in the data, with its weight in the loss."""
    thread: str
    prompt: str
    chosen: str
    rejected: str
    weight: float = 1.0


@dataclass
class Example:
    """A tokenised pair: prompt + chosen and prompt + rejected (both with the same
    prompt), the prompt's length, the weight."""
    chosen: list[int]
    rejected: list[int]
    prompt_len: int
    weight: float

    @property
    def length(self) -> int:
        return max(len(self.chosen), len(self.rejected))


# ---- pairs ------------------------------------------------------------------------------
def load_pairs(cfg: DPOConfig, split: str, counts: dict) -> list[Pair]:
    """The pairs of ``split`` as ``cfg.pairs`` says, weighted (``exposure_weight``,
    ranking normalisation, ``length``), in a fixed order.  Every dropped pair is counted in
    ``counts``."""
    if cfg.pairs == "time_rule":
        df = read_table(cfg.data, schema.PAIRS_FILE, schema.PAIR_COLUMNS, split)
        pairs = [Pair(str(r.thread_id), r.prompt, r.chosen, r.rejected) for r in df.itertuples(index=False)]
    elif cfg.pairs == "all":
        pairs = _all_pairs(cfg, split, counts)
    else:
        pairs = _ranking_pairs(cfg, split, counts)
    if split == "train" and cfg.train_half != "all":
        from ambient_rlhf.data.splits import half_of

        kept = [p for p in pairs if half_of(p.thread) == cfg.train_half]
        counts["train_other_half_pairs"] = len(pairs) - len(kept)
        pairs = kept
    ok = [all(isinstance(t, str) and t.strip() for t in (p.prompt, p.chosen, p.rejected)) for p in pairs]
    counts[f"{split}_skipped_empty_text"] = ok.count(False)
    pairs = [p for p, k in zip(pairs, ok) if k]
    if split == "train" and cfg.length != "keep":
        pairs = adjust_for_length(pairs, cfg.length, cfg.seed, counts)
    counts[f"{split}_pairs"] = len(pairs)
    return pairs


def _all_pairs(cfg: DPOConfig, split: str, counts: dict) -> list[Pair]:
    from ambient_rlhf.data.covariates import candidate_pairs

    resp = read_table(cfg.data, schema.RESPONSES_FILE, schema.RESPONSE_COLUMNS, split)
    df = candidate_pairs(resp, cfg.all_pairs_min_ratio, cfg.all_pairs_min_score, 0, cfg.seed)
    earlier = (df["seconds_difference"] < 0).to_numpy()  # the preferred answer came first: maybe exposure
    counts[f"{split}_candidate_pairs"] = int(len(df))
    counts[f"{split}_chosen_earlier"] = int(earlier.sum())
    out = []
    for r, e in zip(df.itertuples(index=False), earlier):
        w = cfg.exposure_weight if e else 1.0
        if w > 0:
            out.append(Pair(str(r.thread_id), r.prompt, r.chosen, r.rejected, w))
    counts[f"{split}_dropped_exposure"] = int(len(df) - len(out))
    return out


def _ranking_pairs(cfg: DPOConfig, split: str, counts: dict) -> list[Pair]:
    """Every ordered pair (i better than j by the adjusted rank; ties give none) of each
    thread's ranking, ``1 / P_thread`` each."""
    df = read_table(cfg.data, schema.RANKINGS_FILE, schema.RANKING_COLUMNS, split)
    rng = np.random.RandomState(cfg.seed)
    per_thread: list[list[tuple[str, str, str, str]]] = []
    for r in df.itertuples(index=False):
        idx = np.arange(len(r.responses))
        if len(idx) > cfg.max_ranked:
            idx = np.sort(rng.choice(idx, cfg.max_ranked, replace=False))
            counts["ranking_responses_dropped"] = counts.get("ranking_responses_dropped", 0) + len(r.responses) - len(idx)
        got = [(str(r.thread_id), r.prompt, r.responses[i], r.responses[j]) for i in idx for j in idx
               if float(r.adjusted[i]) > float(r.adjusted[j])]
        if got:
            per_thread.append(got)
        else:
            counts[f"{split}_threads_without_pairs"] = counts.get(f"{split}_threads_without_pairs", 0) + 1
    weights = ranking_pair_weights([len(g) for g in per_thread])
    flat = [p for g in per_thread for p in g]
    return [Pair(t, p, c, rj, w) for (t, p, c, rj), w in zip(flat, weights)]


def adjust_for_length(pairs: list[Pair], how: str, seed: int, counts: dict) -> list[Pair]:
    """``balance``: drop a seeded subset of the larger of "longer wins" / "shorter wins"
    (in words) until they are equally many; ``reweight``: scale the weights of the larger
    side so both sides carry the same total weight.  Pairs of equal length are untouched."""
    words = [(len(p.chosen.split()), len(p.rejected.split())) for p in pairs]
    longer = [i for i, (c, r) in enumerate(words) if c > r]
    shorter = [i for i, (c, r) in enumerate(words) if c < r]
    counts["train_longer_wins"], counts["train_shorter_wins"] = len(longer), len(shorter)
    if how == "balance":
        big, small = (longer, shorter) if len(longer) > len(shorter) else (shorter, longer)
        drop = set(np.random.RandomState(seed).choice(big, len(big) - len(small), replace=False).tolist())
        counts["length_balance_dropped"] = len(drop)
        return [p for i, p in enumerate(pairs) if i not in drop]
    w_long = sum(pairs[i].weight for i in longer)
    w_short = sum(pairs[i].weight for i in shorter)
    if w_long > 0 and w_short > 0:
        side, scale = (longer, w_short / w_long) if w_long > w_short else (shorter, w_long / w_short)
        for i in side:
            pairs[i].weight *= scale
        counts["length_reweight_factor"] = round(scale, 6)
    return pairs


def encode(tok, pairs: list[Pair], cfg: DPOConfig, template: str) -> tuple[list[Example], dict[str, int]]:
    """Tokenise the pairs the SFT way (prompt cut from the left, response from the right,
    EOS when it fits); a pair with an answer that keeps no token is skipped and counted."""
    from ambient_rlhf.models.tokenize import encode_pairs

    try:
        ch = encode_pairs(tok, [(p.prompt, p.chosen, cfg.goal) for p in pairs], cfg.max_prompt_tokens,
                          cfg.max_response_tokens, template)
        rj = encode_pairs(tok, [(p.prompt, p.rejected, cfg.goal) for p in pairs], cfg.max_prompt_tokens,
                          cfg.max_response_tokens, template)
    except ValueError as err:
        raise AmbientError(f"dpo: {err}") from None
    out: list[Example] = []
    stats = {"prompt_truncated": 0, "response_truncated": 0, "skipped_empty_response": 0}
    for p, c, r in zip(pairs, ch, rj):
        if len(c.input_ids) <= c.prompt_len or len(r.input_ids) <= r.prompt_len:
            stats["skipped_empty_response"] += 1
            continue
        out.append(Example(c.input_ids, r.input_ids, c.prompt_len, p.weight))
        stats["prompt_truncated"] += int(c.prompt_truncated)
        stats["response_truncated"] += int(c.response_truncated) + int(r.response_truncated)
    return out, stats


def collate(examples: list[Example], pad_id: int):
    """input_ids, attention_mask, labels (2B, T): the B chosen sequences, then the B
    rejected ones; labels are -100 on the prompt and the padding."""
    from ambient_rlhf.models.tokenize import pad_batch

    seqs = [e.chosen for e in examples] + [e.rejected for e in examples]
    lens = [e.prompt_len for e in examples] * 2
    masks = [[0] * p + [1] * (len(s) - p) for s, p in zip(seqs, lens)]
    return pad_batch(seqs, pad_id, "right", label_masks=masks)


def sequence_logps(loss_fn, examples: list[Example], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs (B, 2) = (chosen, rejected) and response token counts
    (B, 2) of one micro-batch, through a ``CausalLMLoss`` (with gradient when enabled)."""
    ids, att, lab = collate(examples, pad_id)
    nll, n = loss_fn(ids.to(device), att.to(device), lab.to(device))  # (2B,) each
    B = len(examples)
    return torch.stack([-nll[:B], -nll[B:]], 1), torch.stack([n[:B], n[B:]], 1)


# ---- the reference, once ----------------------------------------------------------------
def fingerprint(model: str, sets: dict[str, list[Example]], need: dict[str, list[int]]) -> str:
    """sha256 of the model name, every token of the pairs and which pairs are needed: a
    cache made for other pairs, other budgets, another run length or another model is
    not reused."""
    h = hashlib.sha256(model.encode())
    for name, exs in sets.items():
        h.update(name.encode())
        for e in exs:
            h.update(json.dumps([e.chosen, e.rejected, e.prompt_len]).encode())
        h.update(json.dumps(sorted(need[name])).encode())
    return h.hexdigest()


@torch.no_grad()
def compute_reference(loss_fn, examples: list[Example], pad_id: int, batch_size: int, device,
                      desc: str = "reference", need: list[int] | None = None) -> torch.Tensor:
    """(N, 2) reference log-probs of ``examples`` (only the rows ``need`` when given; NaN
    in the others), in batches of similar length."""
    out = torch.full((len(examples), 2), float("nan"), dtype=torch.float32)
    rows = range(len(examples)) if need is None else sorted(set(need))
    order = sorted(rows, key=lambda i: examples[i].length)
    was = loss_fn.training
    loss_fn.eval()
    for s in progress(range(0, len(order), batch_size), desc=desc, unit="batch"):
        idx = order[s:s + batch_size]
        lp, _ = sequence_logps(loss_fn, [examples[i] for i in idx], pad_id, device)
        out[idx] = lp.float().cpu()
    loss_fn.train(was)
    return out


def cached_reference(path: Path, key: str, loss_fn, sets: dict[str, list[Example]], pad_id: int, batch_size: int,
                     device, need: dict[str, list[int]] | None = None) -> dict[str, torch.Tensor]:
    """The reference log-probs of every set (of the rows ``need[set]`` when given: a run
    shorter than an epoch needs only the pairs its steps draw): read from ``path`` when
    its fingerprint is ``key``, else computed and written there."""
    from safetensors import safe_open

    from ambient_rlhf.checkpoint import save_tensors

    if path.is_file():
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                if (f.metadata() or {}).get("fingerprint") == key and set(f.keys()) == set(sets):
                    log.info("reference log-probs read from %s", path)
                    return {k: f.get_tensor(k) for k in sets}
            log.warning("%s: made for other pairs or another model; recomputing", path)
        except Exception as e:  # a torn file from a kill: recompute
            log.warning("%s: unreadable (%s); recomputing", path, e)
    need = need or {}
    ref = {k: compute_reference(loss_fn, exs, pad_id, batch_size, device, f"reference ({k})", need.get(k))
           for k, exs in sets.items()}
    tmp = path.with_suffix(".tmp")
    save_tensors(tmp, ref, metadata={"fingerprint": key})
    tmp.replace(path)
    return ref


# ---- batches, metrics, evaluation --------------------------------------------------------
def pair_metrics(pol: torch.Tensor, ref: torch.Tensor, n: torch.Tensor, w: torch.Tensor, cfg: DPOConfig):
    """Per-pair loss and the weighted sums of the logged quantities.

    pol, ref, n: (B, 2) policy log-probs, reference log-probs, token counts; w (B,).
    Returns (losses (B,), {name: weighted sum}) -- divide by the summed weight."""
    losses, r_c, r_r = dpo_loss(pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1], cfg.beta, cfg.loss,
                                label_smoothing=cfg.label_smoothing if cfg.loss == "cdpo" else 0.0,
                                alpha=cfg.rdpo_alpha if cfg.loss == "rdpo" else 0.0,
                                len_chosen=n[:, 0], len_rejected=n[:, 1])
    w = w.to(losses.dtype)
    with torch.no_grad():
        p = pol.detach()
        sums = {"loss": float((w * losses.detach()).sum()), "rewards/chosen": float((w * r_c).sum()),
                "rewards/rejected": float((w * r_r).sum()), "rewards/margin": float((w * (r_c - r_r)).sum()),
                "rewards/accuracy": float((w * (r_c > r_r).to(w.dtype)).sum()),
                "logps/chosen": float((w * p[:, 0]).sum()), "logps/rejected": float((w * p[:, 1]).sum())}
    return losses, sums


@torch.no_grad()
def evaluate(loss_fn, examples: list[Example], ref: torch.Tensor, pad_id: int, cfg: DPOConfig,
             accelerator) -> dict[str, float]:
    """Weighted means of the pair metrics over ``examples`` (sharded over processes)."""
    was = loss_fn.training
    loss_fn.eval()
    rank, world = accelerator.process_index, accelerator.num_processes
    order = sorted(range(len(examples)), key=lambda i: examples[i].length)[rank::world]
    tot: dict[str, float] = {}
    w_sum = 0.0
    for s in range(0, len(order), cfg.per_device_train_batch_size):
        idx = order[s:s + cfg.per_device_train_batch_size]
        exs = [examples[i] for i in idx]
        pol, n = sequence_logps(loss_fn, exs, pad_id, accelerator.device)
        w = torch.tensor([e.weight for e in exs], device=pol.device)
        _, sums = pair_metrics(pol.float(), ref[idx].to(pol.device), n, w, cfg)
        for k, v in sums.items():
            tot[k] = tot.get(k, 0.0) + v
        w_sum += float(w.sum())
    loss_fn.train(was)
    w_sum = all_sum(accelerator, w_sum)
    keys = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy",
            "logps/chosen", "logps/rejected")
    return {f"eval/{k}": all_sum(accelerator, tot.get(k, 0.0)) / max(w_sum, 1e-12) for k in keys}


def write_samples(path: Path, step: int, model, tok, prompts: list[str], cfg: DPOConfig, template: str) -> float:
    """Greedy answers to ``prompts`` appended to ``samples.jsonl``; returns their mean
    length in tokens (EOS not counted)."""
    from ambient_rlhf.train.generate import generate

    ids = generate((model, tok), prompts, goal=cfg.goal, max_new_tokens=cfg.sample_max_new_tokens, temperature=0.0,
                   seed=cfg.seed, template=template, max_prompt_tokens=cfg.max_prompt_tokens, return_ids=True)
    with path.open("a") as f:
        for p, t in zip(prompts, ids):
            f.write(json.dumps({"step": step, "goal": cfg.goal, "prompt": p, "tokens": len(t),
                                "completion": tok.decode(t, skip_special_tokens=True).strip()}) + "\n")
    return float(np.mean([len(t) for t in ids])) if ids else float("nan")
