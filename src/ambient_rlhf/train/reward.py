"""``ambient rm``: reward models from community feedback.

    ambient rm --data DIR [DIR ...] --model M --out OUT --objective pairwise|ranking|tiers|reply-sentiment
    ambient rm eval --model RM --data DIR [--split test]
    ambient rm combine RM1 RM2 [...] --weights w1,w2 --out DIR

The model is a :class:`~ambient_rlhf.models.heads.ScalarHeadModel`: the body of a causal
LM (best the SFT model) and a linear head read at the last real token of
``render_prompt(prompt) + response + EOS`` -- exactly what the policy will produce.

Training, top to bottom (:func:`train_reward`):
1. read the training units of the objective (pairs, K-way rankings, tiered or
   reply-sentiment responses) from every data directory, keep the threads of
   ``train_half`` and tokenise each distinct (prompt, response) once;
2. build the model; choose how much of it trains (``train_layers``: the head only, the
   top N layers, everything, or LoRA adapters);
3. when the bottom of the network is frozen and ``cache_features`` is on, run the frozen
   part once over every text and keep its output (the last-token feature for a head-only
   model, the hidden states entering the first trained layer otherwise) -- the frozen
   part never changes, so every later step costs only the trained part;
4. loop: batches of units (threads kept together, similar lengths together), each
   distinct text in a batch scored once, the objective's loss, AdamW, checkpoints;
5. fit the normalisation (valid-split reference responses -> mean 0, std 1), save,
   evaluate on ``eval_split`` with baselines (``eval.json``), write the manifest.

Several processes (``torchrun --nproc_per_node N -m ambient_rlhf.cli rm ...`` or
``accelerate launch --multi_gpu --num_processes N -m ambient_rlhf.cli rm ...``): every
process builds the same global batches; each takes a contiguous share of whole units of
a batch (:func:`split_units`) and weighs its loss by its share (:func:`loss_share`), so
the gradients DDP averages are those of one process on the whole batch.  Cached
features, the valid accuracy and the normalisation are split over the processes and
gathered; only the main process writes files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ambient_rlhf import AmbientError
from ambient_rlhf.checkpoint import latest_checkpoint, load_state, rng_state, save_checkpoint, seed_everything, set_rng_state
from ambient_rlhf.config import config_help, load_config, to_dict
from ambient_rlhf.data import schema
from ambient_rlhf.io import write_json, write_manifest
from ambient_rlhf.logging import MetricsWriter, get_logger, progress, setup_logging
from ambient_rlhf.rl import reward_losses as L
from ambient_rlhf.train.common import (LoraSettings, apply_lora, make_optimizer, make_scheduler, merge_lora,
                                       setup_accelerator)

log = get_logger("rm")

OBJECTIVES = ("pairwise", "ranking", "tiers", "reply-sentiment")


@dataclass
class RewardConfig:
    data: list[str] = field(default_factory=list)
    """Data directories (``ambient data build`` output).  Several directories train one
    model on several communities (the seed's merged reward model)."""
    model: str = "default"
    """Model to start from: best the SFT model's directory (reward models not started
    from an SFT model sat at chance in other toolkits); ``default`` = SmolLM2-135M-Instruct."""
    out: str = ""
    """Output directory (reward model + metrics.jsonl + eval.json + manifest.json)."""
    objective: Literal["pairwise", "ranking", "tiers", "reply-sentiment"] = "pairwise"
    """``pairwise``: Bradley-Terry on pairs.parquet; ``ranking``: InstructGPT K-way loss on
    rankings.parquet (each thread's responses scored once, every thread weighs the same);
    ``tiers``: good/ok/bad classifier, reward = expected tier value; ``reply-sentiment``:
    regress the sentiment of a response's replies (responses with replies only)."""
    train_half: Literal["all", "a", "b"] = "all"
    """Which threads to train on: ``all``, or half ``a``/``b`` by the parity of a salted
    hash of thread_id.  ``ambient run`` trains a proxy model on one half and a gold judge
    on the other, so the judge has not seen the proxy's data."""
    community_prefix: bool = False
    """Prefix every prompt with ``[community] `` (the data directory's community name).
    For a model trained on several communities, so it can tell them apart; off by default
    because a single-community model gains nothing from it."""
    template: Literal["auto", "chat", "plain"] = "auto"
    """Prompt template (``models.tokenize.render_prompt``); must match the policy's, so
    ``auto`` (the tokenizer's chat template when it has one), like the SFT stage."""
    max_prompt_tokens: int = 128
    """Prompt budget in tokens (cut from the left).  128 + 128 keeps a 135M forward pass
    affordable on a laptop CPU; raise both on a GPU."""
    max_response_tokens: int = 128
    """Response budget in tokens including EOS (cut from the right, no EOS when cut)."""
    balance_length: bool = False
    """``pairwise``: drop training pairs at random (seeded) until the preferred answer is
    the longer one (in words) in exactly half of them.  On SHP-rule Reddit pairs the
    longer answer wins ~65% of the time, and a small reward model learns that before
    anything else; balanced pairs carry no length signal, so what the model learns must
    come from the content (``ambient rm eval`` reports both, including the beyond-length
    test).  Pairs of equal length are kept; the drop count goes into the manifest."""
    max_ranked: int = 8
    """``ranking``: at most this many responses per thread (a seeded random subset);
    InstructGPT ranked K = 4..9.  Bounds the batch of a very large thread."""
    max_train_units: int = 0
    """Use at most this many training units (pairs / threads / responses), a seeded
    random subset of threads; 0 = all.  For CPU-sized runs."""
    batch_size: int = 4
    """Units per optimizer step (pairs, threads for ``ranking``, responses otherwise).
    4 pairs = at most 8 sequences of 256 tokens: the CPU budget here."""
    length_grouped: bool = True
    """Form batches from threads of similar length (within shuffled windows of 64
    batches) and keep a thread's units together, so each distinct response of a batch is
    scored once and little compute goes to padding.  Off: plain shuffled units."""
    lr: float = 0.0
    """Peak learning rate; 0 = by what trains: 1e-3 head only, 5e-5 top layers,
    1e-4 LoRA, 1e-5 full (InstructGPT used 9e-6 for its full 6B reward model)."""
    weight_decay: float = 0.0
    """AdamW weight decay (not on biases/norms).  0: short runs, the data is the regulariser."""
    schedule: Literal["constant", "linear", "cosine"] = "linear"
    """LR schedule after warmup; linear decay to 0 as in InstructGPT's reward model."""
    warmup_ratio: float = 0.05
    """Fraction of the steps spent warming up linearly."""
    epochs: float = 1.0
    """Passes over the training units (fractions allowed).  One epoch: reward models
    overfit after one (InstructGPT, Stiennon et al.).  Ignored when ``max_steps`` > 0."""
    max_steps: int = 0
    """Optimizer steps; 0 = ``epochs`` worth."""
    grad_clip: float = 1.0
    """Clip the gradient norm to this (0 = off); guards the first steps of a fresh head."""
    train_layers: int = -1
    """How much of the network trains: -1 = all of it (full fine-tuning, or LoRA with
    ``lora.enabled``); 0 = the head only (backbone frozen); N = the top N transformer
    layers, the final norm and the head."""
    cache_features: bool = True
    """With a frozen bottom (``train_layers`` >= 0), compute its output once per text and
    reuse it every step (exact: the frozen part never changes).  What makes a reward
    model practical on a CPU.  Off: run the frozen part each step (no gradient through it)."""
    share_prompts: bool = True
    """When the whole network runs each step (no cached features), run each distinct prompt
    of a batch once and the responses of that prompt on top of its keys/values (exact:
    same outputs and gradients).  Batches keep a thread's units together, so its responses
    share one prompt pass.  Off: every sequence runs in full."""
    feature_cache: str = ""
    """Directory in which head-only runs (``train_layers=0``) keep the backbone's
    last-token features, keyed by model and token ids, so further reward models from the
    same backbone (another objective, another seed) and their evaluation skip the
    backbone entirely; '' = keep them in memory for this run only."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA adapters (``lora.enabled=true``, with ``train_layers=-1``); merged into the
    backbone at the end so the output loads as a plain model."""
    seed: int = 0
    """Seed for the head init, subsets and batch order."""
    eval_every: int = 50
    """Log the valid-split pair accuracy every this many steps (0 = only at the end)."""
    eval_max_pairs: int = 256
    """Valid pairs used by the periodic evaluation (a seeded subset; 0 = all)."""
    norm_max_responses: int = 512
    """Valid-split reference responses used to fit the normalisation (seeded subset; 0 =
    all).  512 pins mean and std to about 5% of a std."""
    eval_split: str = "test"
    """Split evaluated at the end with baselines into eval.json ('' = skip)."""
    eval_loglik: str = "auto"
    """Log-likelihood baseline model for the final evaluation: ``auto`` (the reward
    model's own backbone when it was frozen, else skip), ``none``, ``self``, or a model."""
    save_every: int = 200
    """Checkpoint every this many steps (and at the end); 0 = only at the end."""
    resume: bool = False
    """Continue from the newest checkpoint in ``out``."""
    overwrite: bool = False
    """Replace an existing ``out`` (without ``resume``)."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``.  With several processes each
    takes its own GPU (or all run on the CPU, over gloo)."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """Autocast of the trained part's forward pass in training: ``auto`` = bf16 on a GPU
    that supports it, float32 on CPU (CPU bf16 is slower), as in ``sft`` and ``rl``
    (``ambient run`` runs the stages in one process, where accelerate keeps one setting).
    Frozen-part caching, evaluation and normalisation run in float32."""


# ---- data --------------------------------------------------------------------------------
def half_of(thread_id: str) -> str:
    """``a`` or ``b``: parity of a salted hash.  Salted so the halves are independent of the
    data stage's hash split (an unsalted hash of the same id could correlate with it)."""
    h = hashlib.sha256(("ambient-half:" + str(thread_id)).encode()).digest()
    return "a" if h[0] % 2 == 0 else "b"


def community_name(data_dir: str | Path) -> str:
    """The community of a data directory: its manifest's ``community``, else the most
    common value of the ``community`` column of responses.parquet, else the directory name."""
    p = Path(data_dir)
    m = p / "manifest.json"
    if m.is_file():
        try:
            c = json.loads(m.read_text()).get("community")
            if isinstance(c, str) and c:
                return c
        except json.JSONDecodeError:
            pass
    try:
        import pandas as pd

        col = pd.read_parquet(p / schema.RESPONSES_FILE, columns=["community"])["community"].dropna()
        if len(col):
            return str(col.mode().iloc[0])
    except Exception:  # no such file or column: fall back to the name
        pass
    return p.name


def format_prompt(prompt: str, community: str, prefix: bool) -> str:
    return f"[{community}] {prompt}" if prefix else prompt


def read_table(data_dir: str | Path, name: str, columns: tuple[str, ...], split: str | None = None):
    """A parquet file of a data directory, checked against the contract, one split."""
    import pandas as pd

    path = Path(data_dir) / name
    if not path.is_file():
        raise AmbientError(f"{path}: missing; is {data_dir} a data directory (`ambient data build`)?")
    df = pd.read_parquet(path)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise AmbientError(f"{path}: missing columns {missing} (see ambient_rlhf.data.schema)")
    if split is not None:
        df = df[df["split"] == split].reset_index(drop=True)
    return df


class TextTable:
    """Distinct (prompt, response) texts, tokenised once as ``encode_pair`` does."""

    def __init__(self, tokenizer, max_prompt_tokens: int, max_response_tokens: int, template: str):
        self.tok = tokenizer
        self.maxp, self.maxr, self.template = max_prompt_tokens, max_response_tokens, template
        self.ids: list[list[int]] = []
        self.prompt_len: list[int] = []
        self.resp_chars: list[int] = []
        self.index: dict[tuple[str, str], int] = {}
        self._prompts: dict[str, tuple[list[int], bool]] = {}
        self.prompt_truncated = 0
        self.response_truncated = 0

    def add(self, prompt: str, response: str) -> int:
        key = (prompt, response)
        i = self.index.get(key)
        if i is not None:
            return i
        from ambient_rlhf.models.tokenize import encode_prompt

        if prompt not in self._prompts:
            try:
                self._prompts[prompt] = encode_prompt(self.tok, prompt, self.maxp, self.template)
            except ValueError as e:  # e.g. a token budget smaller than the template
                raise AmbientError(f"max_prompt_tokens / template: {e}") from None
        p_ids, p_cut = self._prompts[prompt]
        # the same steps as models.tokenize.encode_pair (a test checks they agree), with
        # the prompt encoded once per thread instead of once per response
        r_ids = self.tok(response, add_special_tokens=False)["input_ids"]
        r_cut = len(r_ids) + 1 > self.maxr
        r_ids = r_ids[: self.maxr] if r_cut else r_ids + [self.tok.eos_token_id]
        self.prompt_truncated += p_cut
        self.response_truncated += r_cut
        i = len(self.ids)
        self.index[key] = i
        self.ids.append(p_ids + r_ids)
        self.prompt_len.append(len(p_ids))
        self.resp_chars.append(len(response))
        return i

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Unit:
    """One training example: its thread, its (prompt, response) texts, and its target.
    ``rows`` (their indices in a :class:`TextTable`) are filled by :func:`index_units`,
    after subsetting, so only the texts in use are tokenised."""
    thread: str
    texts: list[tuple[str, str]]
    target: Any = None
    """pairwise: None (rows = [chosen, rejected]); ranking: list of scores (higher is
    better); tiers: tier index; reply-sentiment: the sentiment."""
    rows: list[int] = field(default_factory=list)


def index_units(units: list[Unit], table: TextTable) -> list[Unit]:
    """Tokenise the units' texts into ``table`` (each distinct text once); set ``rows``."""
    for u in units:
        u.rows = [table.add(p, r) for p, r in u.texts]
    return units


def load_units(cfg: RewardConfig, split: str, objective: str | None = None,
               half: str = "all", counts: dict | None = None) -> list[Unit]:
    """Units of ``objective`` from every data directory's ``split``."""
    objective = objective or cfg.objective
    counts = counts if counts is not None else {}
    units: list[Unit] = []
    rng = np.random.RandomState(cfg.seed)
    for d in cfg.data:
        com = community_name(d)
        keep = (lambda t: True) if half == "all" else (lambda t: half_of(t) == half)
        if objective == "pairwise":
            df = read_table(d, schema.PAIRS_FILE, schema.PAIR_COLUMNS, split)
            for r in df.itertuples(index=False):
                if not keep(r.thread_id):
                    continue
                p = format_prompt(r.prompt, com, cfg.community_prefix)
                units.append(Unit(f"{com}/{r.thread_id}", [(p, r.chosen), (p, r.rejected)]))
        elif objective == "ranking":
            df = read_table(d, schema.RANKINGS_FILE, schema.RANKING_COLUMNS, split)
            for r in df.itertuples(index=False):
                if not keep(r.thread_id) or len(r.responses) < 2:
                    continue
                idx = np.arange(len(r.responses))
                if len(idx) > cfg.max_ranked:
                    idx = np.sort(rng.choice(idx, cfg.max_ranked, replace=False))
                    counts["ranking_responses_dropped"] = counts.get("ranking_responses_dropped", 0) + len(r.responses) - len(idx)
                p = format_prompt(r.prompt, com, cfg.community_prefix)
                units.append(Unit(f"{com}/{r.thread_id}", [(p, r.responses[i]) for i in idx],
                                  [float(r.adjusted[i]) for i in idx]))
        else:
            df = read_table(d, schema.RESPONSES_FILE, schema.RESPONSE_COLUMNS, split)
            col = "tier" if objective == "tiers" else "reply_sentiment"
            n0 = len(df)
            df = df[df[col].notna()]
            counts[f"{split}_without_{col}"] = counts.get(f"{split}_without_{col}", 0) + n0 - len(df)
            for r in df.itertuples(index=False):
                if not keep(r.thread_id):
                    continue
                if objective == "tiers" and r.tier not in schema.TIERS:
                    raise AmbientError(f"{Path(d) / schema.RESPONSES_FILE}: tier {r.tier!r} of response "
                                       f"{r.response_id} is not one of {schema.TIERS}")
                target = schema.TIERS.index(r.tier) if objective == "tiers" else float(r.reply_sentiment)
                p = format_prompt(r.prompt, com, cfg.community_prefix)
                units.append(Unit(f"{com}/{r.thread_id}", [(p, r.response)], target))
    return units


def balance_by_length(units: list[Unit], seed: int, counts: dict | None = None) -> list[Unit]:
    """Pairwise units with as many "preferred is longer" as "preferred is shorter" pairs
    (in whitespace words): a seeded random subset of the larger side is dropped; pairs of
    equal length stay.  Order is kept.  ``counts["length_balance_dropped"]`` says how many
    went."""
    longer = [i for i, u in enumerate(units) if len(u.texts[0][1].split()) > len(u.texts[1][1].split())]
    shorter = [i for i, u in enumerate(units) if len(u.texts[0][1].split()) < len(u.texts[1][1].split())]
    big, small = (longer, shorter) if len(longer) > len(shorter) else (shorter, longer)
    rng = np.random.RandomState(seed)
    drop = set(rng.choice(big, len(big) - len(small), replace=False).tolist()) if len(big) > len(small) else set()
    if counts is not None:
        counts["length_balance_dropped"] = counts.get("length_balance_dropped", 0) + len(drop)
    return [u for i, u in enumerate(units) if i not in drop]


def subset_threads(units: list[Unit], n: int, seed: int) -> list[Unit]:
    """At most ``n`` units, taking whole threads in a seeded random order."""
    if n <= 0 or len(units) <= n:
        return units
    threads = sorted({u.thread for u in units})
    order = np.random.RandomState(seed).permutation(len(threads))
    by = defaultdict(list)
    for u in units:
        by[u.thread].append(u)
    out: list[Unit] = []
    for i in order:
        out.extend(by[threads[i]])
        if len(out) >= n:
            break
    return out[:n]


def epoch_batches(units: list[Unit], lengths: list[int], batch_size: int, seed: int, epoch: int,
                  grouped: bool) -> list[list[Unit]]:
    """The batches of one epoch, a pure function of (seed, epoch) so a resumed run sees
    the same ones.  Grouped: shuffle threads, sort threads by length inside windows of
    ~64 batches, cut into batches, shuffle the batches."""
    rng = np.random.RandomState((seed * 1_000_003 + epoch) % (2**32))
    if not grouped:
        order = rng.permutation(len(units))
        flat = [units[i] for i in order]
        return [flat[i:i + batch_size] for i in range(0, len(flat), batch_size)]
    by: dict[str, list[Unit]] = defaultdict(list)
    for u in units:
        by[u.thread].append(u)
    threads = list(by)
    threads = [threads[i] for i in rng.permutation(len(threads))]
    per_thread = max(len(units) / max(len(threads), 1), 1.0)
    window = max(1, int(64 * batch_size / per_thread))
    tlen = {t: max(lengths[r] for u in by[t] for r in u.rows) for t in threads}
    ordered: list[str] = []
    for i in range(0, len(threads), window):
        ordered.extend(sorted(threads[i:i + window], key=lambda t: tlen[t]))
    flat = [u for t in ordered for u in by[t]]
    batches = [flat[i:i + batch_size] for i in range(0, len(flat), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def split_units(units: list[Unit], world: int) -> list[list[Unit]]:
    """Cut one global batch into ``world`` contiguous shares of whole units (a pair, a
    ranked thread, a response is never split) with about the same number of sequences:
    a unit goes to the share in which the middle of its sequences falls.  Contiguous, so
    a thread's units mostly stay together (its prompt is run once).  A share can be empty
    (a batch of fewer units than processes)."""
    if world == 1:
        return [list(units)]
    sizes = np.cumsum([len(u.rows) for u in units])
    total = float(sizes[-1]) if len(units) else 1.0
    shares: list[list[Unit]] = [[] for _ in range(world)]
    for u, end in zip(units, sizes):
        mid = float(end) - len(u.rows) / 2
        shares[min(int(mid * world / total), world - 1)].append(u)
    return shares


def loss_share(objective: str, share: list[Unit], units: list[Unit]) -> float:
    """The weight of a share's loss in the loss of its whole batch.

    Every objective's batch loss is a mean over units -- pairs, responses, or for
    ``ranking`` the threads with at least one pair (ties give none; each thread's pairs
    are already weighted 1/P_g inside :func:`~ambient_rlhf.rl.reward_losses.ranking_loss`,
    and a thread is never split) -- so ``loss(batch) = sum over shares of
    n(share) / n(batch) * loss(share)``."""
    if objective == "ranking":
        def live(us: list[Unit]) -> int:
            return sum(1 for u in us if len(set(u.target)) > 1)
        return live(share) / max(live(units), 1)
    return len(share) / max(len(units), 1)


def rank_share(units: list[Unit], world: int, rank: int) -> tuple[list[Unit], list[int]]:
    """This process's units of a global batch and the distinct rows it scores.  An empty
    share scores the batch's first row with weight 0: DDP needs a backward pass from every
    process."""
    mine = split_units(units, world)[rank]
    rows = sorted({r for u in mine for r in u.rows}) or [units[0].rows[0]]
    return mine, rows


def shard_rows(table: "TextTable", rows: list[int], rank: int, world: int) -> list[int]:
    """This process's share of the texts of an evaluation: distinct rows by length, every
    ``world``-th one (so every process gets short and long texts)."""
    ordered = sorted(set(rows), key=lambda r: len(table.ids[r]))
    return ordered[rank::world]


# ---- scoring: the trained part of the network ---------------------------------------------
class _Stop(Exception):
    pass


class HeadOnFeatures(nn.Module):
    """Head-only model on cached last-token features: (n, d) -> (n, n_out)."""

    def __init__(self, head: nn.Linear):
        super().__init__()
        self.head = head

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(feats)


class TopLayers(nn.Module):
    """The top ``n`` layers + final norm + head, run on cached hidden states that enter
    layer ``L - n``.  Runs the body's own forward with ``inputs_embeds`` = the cached
    states and its layer list cut to the top ``n`` (so masks and rotary embeddings are
    the body's own); checked against the full model before use."""

    def __init__(self, rm, n: int):
        super().__init__()
        from ambient_rlhf.models.heads import body_of

        body = body_of(rm.lm)
        self.__dict__["_body"] = body  # not a submodule: only the trained part is registered
        self.layers = nn.ModuleList(list(body.layers)[len(body.layers) - n:])
        self.norm = body.norm
        self.head = rm.head

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from ambient_rlhf.models.heads import last_token_index

        body = self._body
        full = body.layers
        body.layers = self.layers
        try:
            pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            out = body(inputs_embeds=hidden, attention_mask=attention_mask, position_ids=pos, use_cache=False)
        finally:
            body.layers = full
        h = out.last_hidden_state  # (n, T, d)
        last = h[torch.arange(h.shape[0], device=h.device), last_token_index(attention_mask)]
        return self.head(last)


def _pad(seqs: list[torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (len_i, ...) tensors into (n, T, ...) plus an (n, T) mask."""
    T = max(s.shape[0] for s in seqs)
    out = seqs[0].new_zeros((len(seqs), T) + tuple(seqs[0].shape[1:]))
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = 1
    return out.to(device), mask.to(device)


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


def shared_prompt_outputs(rm, table: TextTable, rows: list[int], device) -> torch.Tensor:
    """Head outputs of ``rows`` through the whole model, each distinct prompt run once.

    Rows that share a prompt (the responses of one thread) reuse its keys and values: the
    prompts run first (right-padded, with a cache), the cache is gathered per row, and the
    responses run on top with positions continuing after their prompt; gradients flow
    into the prompt pass through the cache.  Same numbers as scoring each full sequence
    (a test checks outputs and gradients), for a fraction of the prompt compute when a
    thread's responses share a batch.  Returns (len(rows), n_outputs)."""
    from ambient_rlhf.models.heads import body_of

    groups: dict[tuple[int, ...], list[int]] = {}
    for r in rows:
        groups.setdefault(tuple(table.ids[r][: table.prompt_len[r]]), []).append(r)
    if len(groups) == len(rows) or any(len(p) == 0 for p in groups):  # nothing shared: one plain pass
        ids, mask = _pad([torch.tensor(table.ids[r]) for r in rows], device)
        return rm(ids, mask)
    body = body_of(rm.lm)
    prompts = list(groups)
    p_ids, p_mask = _pad([torch.tensor(p) for p in prompts], device)  # (G, Tp)
    out = body(input_ids=p_ids, attention_mask=p_mask, position_ids=(p_mask.cumsum(-1) - 1).clamp(min=0),
               use_cache=True)
    cache = out.past_key_values
    order = [r for p in prompts for r in groups[p]]
    g = torch.tensor([i for i, p in enumerate(prompts) for _ in groups[p]], device=device)  # (B,) prompt of each row
    cache.batch_select_indices(g)  # every layer's keys/values: (G, ...) -> (B, ...)
    r_ids, r_mask = _pad([torch.tensor(table.ids[r][table.prompt_len[r]:]) for r in order], device)  # (B, Tr)
    p_len = torch.tensor([table.prompt_len[r] for r in order], device=device)
    r_pos = p_len.unsqueeze(1) + torch.arange(r_ids.shape[1], device=device).unsqueeze(0)  # (B, Tr)
    full_mask = torch.cat([p_mask[g], r_mask], dim=1)  # (B, Tp + Tr): prompt padding masked out
    h = body(input_ids=r_ids, attention_mask=full_mask, position_ids=r_pos, past_key_values=cache,
             use_cache=True).last_hidden_state  # (B, Tr, d)
    last = h[torch.arange(len(order), device=device), r_mask.sum(1) - 1]  # (B, d) last real response token
    res = rm.head(last.to(rm.head.weight.dtype))
    where = {r: i for i, r in enumerate(order)}
    return res[torch.tensor([where[r] for r in rows], device=device)]


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
        self.module: nn.Module = (HeadOnFeatures(rm.head) if mode == "head" else
                                  TopLayers(rm, n_top) if mode == "top" else rm)

    def _ids(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return _pad([torch.tensor(self.table.ids[r]) for r in rows], self.device)

    @torch.no_grad()
    def _frozen(self, rows: list[int]) -> list[torch.Tensor]:
        """Output of the frozen bottom for each row (CPU float32)."""
        from ambient_rlhf.models.heads import body_of, last_token_index

        ids, mask = self._ids(rows)
        if self.mode == "head":
            h = self.rm.hidden_states(ids, mask)  # (n, T, d)
            last = h[torch.arange(h.shape[0], device=h.device), last_token_index(mask)]
            return [x.float().cpu() for x in last]
        body = body_of(self.rm.lm)
        layer = body.layers[len(body.layers) - self.n_top]
        got: dict[str, torch.Tensor] = {}

        def grab(module, args, kwargs):
            got["h"] = args[0] if args else kwargs["hidden_states"]
            raise _Stop

        handle = layer.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            self.rm.hidden_states(ids, mask)
        except _Stop:
            pass
        finally:
            handle.remove()
        lens = mask.sum(1).tolist()
        return [got["h"][i, : lens[i]].float().cpu() for i in range(len(rows))]

    def prepare(self, rows: list[int], batch_size: int, desc: str = "caching features", save: bool = True) -> int:
        """Fill the cache for ``rows`` (length-sorted batches, so little padding); return
        how many texts were computed.  ``save``: write new features to the feature store
        as they come (off for all but one of several processes, which save in turn)."""
        if self.mode == "full":
            return 0
        if self.store is not None:
            for r in rows:
                f = self.store.features.get(text_key(self.table.ids[r]))
                if f is not None:
                    self.cache[r] = f
        todo = sorted({r for r in rows if r not in self.cache}, key=lambda r: len(self.table.ids[r]))
        bar = progress(total=len(todo), desc=desc, unit="text")
        for i in range(0, len(todo), batch_size):
            chunk = todo[i:i + batch_size]
            for r, f in zip(chunk, self._frozen(chunk)):
                self.cache[r] = f
                if self.store is not None:
                    self.store.features[text_key(self.table.ids[r])] = f
            bar.update(len(chunk))
            if save and self.store is not None and (i // batch_size) % 50 == 49:
                self.store.save()  # a killed run keeps most of its work
        bar.close()
        if save and self.store is not None and todo:
            self.store.save()
        return len(todo)

    def outputs(self, rows: list[int]) -> torch.Tensor:
        """(len(rows), n_outputs) head outputs; differentiable in the trained part."""
        if self.mode == "head":
            return self.module(torch.stack([self.cache[r] for r in rows]).to(self.device))
        if self.mode == "top":
            h, mask = _pad([self.cache[r] for r in rows], self.device)
            return self.module(h, mask)
        if self.share_prompts:
            return shared_prompt_outputs(self.rm, self.table, rows, self.device)
        ids, mask = self._ids(rows)
        return self.module(ids, mask)

    def check(self, rows: list[int]) -> float:
        """Largest difference between the cached path and the plain full model."""
        with torch.no_grad():
            ids, mask = self._ids(rows)
            ref = self.rm(ids, mask)
            return float((self.outputs(rows) - ref).abs().max())


class ScoreRows(nn.Module):
    """:meth:`Scorer.outputs` as one module whose forward scores text rows, so that
    ``accelerator.prepare`` puts DDP around the whole computation of a training step (the
    shared-prompt path calls the body and the head directly; called from outside a DDP
    wrapper, they would skip the gradient sync).  It registers the trained module only,
    so DDP sees exactly the trained parameters.  Evaluation calls the scorer directly (no
    DDP: a process may score texts the others do not)."""

    def __init__(self, scorer: Scorer):
        super().__init__()
        self.trained = scorer.module
        self.__dict__["scorer"] = scorer  # not a submodule

    def forward(self, rows: list[int]) -> torch.Tensor:
        return self.scorer.outputs(rows)


# ---- losses on a batch ----------------------------------------------------------------------
def batch_loss(objective: str, rm, out: torch.Tensor, pos: dict[int, int], units: list[Unit]):
    """Loss and accuracy of a batch.  ``out``: (n_rows, n_outputs) head outputs of the
    batch's distinct rows; ``pos``: row -> position in ``out``."""
    if objective == "pairwise":
        r = rm.raw_reward(out)
        c = torch.tensor([pos[u.rows[0]] for u in units], device=out.device)
        j = torch.tensor([pos[u.rows[1]] for u in units], device=out.device)
        return L.pairwise_loss(r[c], r[j]), (r[c] > r[j]).float().mean()
    if objective == "ranking":
        r = rm.raw_reward(out)
        idx, grp, sc = [], [], []
        for g, u in enumerate(units):
            idx += [pos[x] for x in u.rows]
            grp += [g] * len(u.rows)
            sc += list(u.target)
        idx_t = torch.tensor(idx, device=out.device)
        grp_t = torch.tensor(grp, device=out.device)
        sc_t = torch.tensor(sc, device=out.device)
        return L.ranking_loss(r[idx_t], grp_t, sc_t), L.ranking_accuracy(r[idx_t], grp_t, sc_t)
    i = torch.tensor([pos[u.rows[0]] for u in units], device=out.device)
    if objective == "tiers":
        y = torch.tensor([u.target for u in units], device=out.device)
        logits = out[i]
        return L.tier_loss(logits, y), (logits.argmax(-1) == y).float().mean()
    y = torch.tensor([u.target for u in units], dtype=out.dtype, device=out.device)
    pred = out[i, 0]
    return L.sentiment_loss(pred, y), torch.corrcoef(torch.stack([pred, y]))[0, 1] if len(units) > 1 else torch.tensor(float("nan"))


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


# ---- training --------------------------------------------------------------------------------
def _auto_lr(cfg: RewardConfig) -> float:
    if cfg.lr > 0:
        return cfg.lr
    if cfg.train_layers == 0:
        return 1e-3
    if cfg.train_layers > 0:
        return 5e-5
    return 1e-4 if cfg.lora.enabled else 1e-5


def _validate(cfg: RewardConfig) -> None:
    if not cfg.data:
        raise AmbientError("rm: no data directory; pass --data DIR (several for a merged model)")
    if not cfg.out:
        raise AmbientError("rm: no output directory; pass --out DIR")
    if cfg.batch_size < 1:
        raise AmbientError(f"rm: batch_size={cfg.batch_size} must be >= 1")
    if cfg.lora.enabled and cfg.train_layers != -1:
        raise AmbientError("rm: lora.enabled=true needs train_layers=-1 (LoRA adapts every layer)")
    if cfg.max_ranked < 2:
        raise AmbientError(f"rm: max_ranked={cfg.max_ranked} must be >= 2")
    if cfg.balance_length and cfg.objective != "pairwise":
        raise AmbientError(f"rm: balance_length=true applies to objective=pairwise, not {cfg.objective}")


def _prepare_out(cfg: RewardConfig, accelerator=None) -> Path | None:
    """Create ``out``; return the checkpoint to resume from, if any.  Every process checks
    (so all raise the same error), then the main process alone clears and creates."""
    out = Path(cfg.out)
    ckpt, clear = None, False
    if out.exists() and any(out.iterdir()):
        if cfg.resume:
            ckpt = latest_checkpoint(out)
        elif not cfg.overwrite:
            raise AmbientError(f"{out}: output directory exists; pass --overwrite, --resume, or another --out")
        else:
            clear = True
    if accelerator is not None:
        accelerator.wait_for_everyone()
    if accelerator is None or accelerator.is_main_process:
        if clear:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return ckpt


def train_reward(cfg: RewardConfig) -> Path:
    """Train a reward model as configured; return its directory."""
    from ambient_rlhf.models.heads import ScalarHeadModel, body_of
    from accelerate.utils import gather_object

    from ambient_rlhf.models.load import load_causal_lm, load_tokenizer, resolve_model

    _validate(cfg)
    out = Path(cfg.out)
    # step 0. processes (one, or several under torchrun / accelerate launch), output directory
    accelerator = setup_accelerator(1, cfg.mixed_precision, cpu=None if cfg.device == "auto" else cfg.device == "cpu")
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    ckpt = _prepare_out(cfg, accelerator)
    seed_everything(cfg.seed)
    device = accelerator.device
    t_start = time.time()

    # step 1. data: units of the objective, texts tokenised once
    tok = load_tokenizer(cfg.model, padding_side="right")
    template = cfg.template
    table = TextTable(tok, cfg.max_prompt_tokens, cfg.max_response_tokens, template)
    counts: dict[str, Any] = {}
    train_units = load_units(cfg, "train", half=cfg.train_half, counts=counts)
    if cfg.balance_length:
        train_units = balance_by_length(train_units, cfg.seed, counts)
    train = index_units(subset_threads(train_units, cfg.max_train_units, cfg.seed), table)
    if not train:
        raise AmbientError(f"rm: no training {cfg.objective} units in {cfg.data} (split train, half {cfg.train_half})")
    valid_pairs = index_units(subset_threads(load_units(cfg, "valid", objective="pairwise", counts=counts),
                                             cfg.eval_max_pairs, cfg.seed), table)
    norm_units = index_units(subset_threads(reference_units(cfg), cfg.norm_max_responses, cfg.seed), table)
    counts.update(train_units=len(train), train_threads=len({u.thread for u in train}), texts=len(table),
                  valid_pairs=len(valid_pairs), reference_responses=len(norm_units),
                  prompt_truncated=table.prompt_truncated, response_truncated=table.response_truncated)
    log.info("rm: %d train %s units, %d texts, %d valid pairs", len(train), cfg.objective, len(table), len(valid_pairs))

    # step 2. model: body + small head; choose what trains
    lm = load_causal_lm(cfg.model)
    kind = "tiers" if cfg.objective == "tiers" else "scalar"
    rm = ScalarHeadModel(lm, kind=kind)
    body = body_of(lm)
    n_layers = len(body.layers)
    if cfg.train_layers > n_layers:
        raise AmbientError(f"rm: train_layers={cfg.train_layers} but the model has {n_layers} layers")
    for p in lm.parameters():
        p.requires_grad_(cfg.train_layers == -1)
    out_emb, in_emb = lm.get_output_embeddings(), lm.get_input_embeddings()
    for p in (out_emb.parameters() if out_emb is not None else ()):
        if in_emb is None or p is not in_emb.weight:  # the LM head is never used by a reward model:
            p.requires_grad_(False)                   # no gradient (and DDP wants one for every trained tensor)
    if cfg.train_layers > 0:
        for m in list(body.layers)[n_layers - cfg.train_layers:] + [body.norm]:
            for p in m.parameters():
                p.requires_grad_(True)
    if cfg.lora.enabled:
        rm.lm = apply_lora(lm, cfg.lora)
    rm.to(device).eval()  # dropout is off anyway; eval() keeps any stochastic layer quiet
    mode = "full"
    if cfg.train_layers >= 0 and cfg.cache_features:
        mode = "head" if cfg.train_layers == 0 else "top"
    store = FeatureStore(cfg.feature_cache, resolve_model(cfg.model)) if (mode == "head" and cfg.feature_cache) else None
    scorer = Scorer(rm, table, mode, cfg.train_layers, device, tok.pad_token_id, store)
    if mode == "top":
        probe = train[0].rows[:2]
        scorer.prepare(probe, cfg.batch_size)
        err = max(gather_object([scorer.check(probe)]))  # every process decides alike
        if err > 1e-3:
            log.warning("rm: cached top-layer path differs from the model by %.2g; not caching", err)
            scorer = Scorer(rm, table, "full", cfg.train_layers, device, tok.pad_token_id)
            mode = "full"
    scorer.share_prompts = mode == "full" and cfg.share_prompts
    counts["mode"] = mode
    params = [p for p in scorer.module.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    log.info("rm: mode %s, %d trainable parameters, %d processes", mode, n_params, world)

    # step 3. cache what the frozen part computes (every text, once).  With several
    # processes each caches only what it scores: its shares of the training batches and
    # its shard of the evaluation texts; a feature store is written by each in turn.
    lengths = [len(x) for x in table.ids]
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * steps_per_epoch))
    if world == 1:
        need = sorted({r for u in train + valid_pairs + norm_units for r in u.rows})
    else:
        need_set = set(shard_rows(table, [r for u in valid_pairs for r in u.rows], rank, world))
        need_set |= set(shard_rows(table, [u.rows[0] for u in norm_units], rank, world))
        for e in range(math.ceil(total / steps_per_epoch)):
            for b in epoch_batches(train, lengths, cfg.batch_size, cfg.seed, e, cfg.length_grouped)[
                    : total - e * steps_per_epoch]:
                need_set.update(rank_share(b, world, rank)[1])
        need = sorted(need_set)
    n_new = scorer.prepare(need, max(cfg.batch_size * 2, 8), save=main)
    if store is not None and world > 1:
        for r in range(1, world):  # after the main process's save, one at a time
            accelerator.wait_for_everyone()
            if rank == r and n_new:
                store.save()
        accelerator.wait_for_everyone()

    # step 4. the training loop
    lr = _auto_lr(cfg)
    opt = make_optimizer(scorer.module, lr=lr, weight_decay=cfg.weight_decay)  # fused AdamW
    sched = make_scheduler(opt, cfg.schedule, int(cfg.warmup_ratio * total), total)
    step = 0
    if ckpt is not None:
        state = load_state(ckpt)
        named = dict(scorer.module.named_parameters())
        for k, v in state["trainable"].items():
            named[k].data.copy_(v.to(device))
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        step = state["step"]
        log.warning("rm: resuming from %s (step %d of %d)", ckpt, step, total)
    # DDP around the trained part when there are several processes (else the module as is)
    step_fn, opt = accelerator.prepare(ScoreRows(scorer), opt)
    metrics = MetricsWriter(out, resume_step=step if ckpt is not None else None, enabled=main)

    def checkpoint(s: int) -> None:
        if main:
            trainable = {k: v.detach().cpu().clone() for k, v in scorer.module.named_parameters() if v.requires_grad}
            save_checkpoint(out, s, {"step": s, "trainable": trainable, "optimizer": opt.state_dict(),
                                     "scheduler": sched.state_dict(), "rng": rng_state(), "config": to_dict(cfg)})
        accelerator.wait_for_everyone()

    bar = progress(total=total, initial=step, desc=f"rm {cfg.objective}", unit="step") if main else None
    epoch_cache: tuple[int, list] = (-1, [])
    t_loop = time.perf_counter()
    while step < total:
        epoch, k = divmod(step, steps_per_epoch)
        if epoch_cache[0] != epoch:
            epoch_cache = (epoch, epoch_batches(train, lengths, cfg.batch_size, cfg.seed, epoch, cfg.length_grouped))
        units = epoch_cache[1][k]  # the global batch, the same in every process
        t0 = time.perf_counter()
        mine, rows = rank_share(units, world, rank)  # one process: all of it
        pos = {r: i for i, r in enumerate(rows)}
        out_rows = step_fn(rows)  # each distinct text of the share scored once
        if mine:
            loss, acc = batch_loss(cfg.objective, rm, out_rows.float(), pos, mine)
        else:
            loss, acc = out_rows.float().sum() * 0.0, torch.tensor(float("nan"))
        opt.zero_grad(set_to_none=True)
        if world > 1:
            # DDP averages gradients over processes: weigh each share so that the average
            # is the gradient of the whole batch's loss
            accelerator.backward(loss * (loss_share(cfg.objective, mine, units) * world))
        else:
            accelerator.backward(loss)
        gnorm = accelerator.clip_grad_norm_(params, cfg.grad_clip) if cfg.grad_clip > 0 else torch.tensor(0.0)
        opt.step()
        sched.step()
        step += 1
        dt = time.perf_counter() - t0
        if world > 1:  # the logged loss and accuracy of the whole batch, from every share's outputs
            got = dict(gather_object([(r, out_rows[i].detach().float().cpu()) for i, r in enumerate(rows)]))
            every = sorted(got)
            with torch.no_grad():
                loss, acc = batch_loss(cfg.objective, rm, torch.stack([got[r] for r in every]),
                                       {r: i for i, r in enumerate(every)}, units)
        all_rows = sorted({r for u in units for r in u.rows})
        row = {"rm/loss": loss.item(), "rm/accuracy": acc.item(), "rm/lr": sched.get_last_lr()[0],
               "rm/grad_norm": float(gnorm), "perf/step_seconds": dt, "perf/units": len(units),
               "perf/sequences": len(all_rows), "perf/tokens": sum(lengths[r] for r in all_rows),
               "epoch": step / steps_per_epoch}
        if valid_pairs and cfg.eval_every > 0 and (step % cfg.eval_every == 0 or step == total):
            row["rm/valid_accuracy"] = pair_accuracy(scorer, valid_pairs, max(cfg.batch_size * 2, 8), accelerator)
        metrics.log(step, row)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{row['rm/loss']:.3f}", refresh=False)
        if (cfg.save_every > 0 and step % cfg.save_every == 0) or step == total:
            checkpoint(step)
    if bar is not None:
        bar.close()
    metrics.close()
    loop_seconds = time.perf_counter() - t_loop
    opt = sched = step_fn = None  # free the optimizer state before the evaluation loads the saved model
    accelerator.free_memory()  # (the accelerator's references too)

    # step 5. normalise on the reference responses (scored by all processes), save,
    # evaluate, manifest (the main process; the others return once the model is saved, so
    # a long evaluation holds no barrier, whose timeout is 10-30 minutes)
    if cfg.lora.enabled:
        rm.lm = merge_lora(rm.lm)
    ref = raw_rewards(scorer, [u.rows[0] for u in norm_units], max(cfg.batch_size * 2, 8), accelerator)
    mean, std = L.fit_normalization(torch.tensor([ref[r] for r in sorted(ref)])) if ref else (0.0, 1.0)
    if not ref:
        log.warning("rm: no valid-split responses; rewards are not normalised")
    counts["processes"] = world
    if not main:
        accelerator.wait_for_everyone()  # paired with the main process's, after its save
        return out
    rm.set_normalization(mean, std)
    rm.meta = {"objective": cfg.objective, "template": template, "max_prompt_tokens": cfg.max_prompt_tokens,
               "max_response_tokens": cfg.max_response_tokens, "community_prefix": cfg.community_prefix,
               "communities": [community_name(d) for d in cfg.data], "train_layers": cfg.train_layers,
               "base_model": cfg.model, "norm_reference": {"split": "valid", "n": len(ref)}}
    rm.cpu()
    rm.save_pretrained(out, tok)  # reward_config.json is written last: it marks a complete model
    accelerator.wait_for_everyone()
    result: dict[str, Any] = {}
    if cfg.eval_split:
        from ambient_rlhf.eval.reward_eval import evaluate_reward

        per = {}
        for d in cfg.data:
            name = community_name(d)
            per[name] = evaluate_reward(out, d, split=cfg.eval_split, out=out / "eval" / f"{name}-{cfg.eval_split}",
                                        loglik_model=cfg.eval_loglik, max_pairs=cfg.eval_max_pairs,
                                        batch_size=max(cfg.batch_size * 2, 8), seed=cfg.seed,
                                        feature_cache=cfg.feature_cache or None)
        result = next(iter(per.values())) if len(per) == 1 else {"communities": per}
        write_json(out / "eval.json", result)
    write_manifest(out, "rm", to_dict(cfg), inputs=[*cfg.data, resolve_model(cfg.model)], counts=counts,
                   normalization={"mean": mean, "std": std}, trainable_parameters=n_params, steps=total,
                   timings={"total_seconds": round(time.time() - t_start, 2), "loop_seconds": round(loop_seconds, 2)})
    return out


def reference_units(cfg: RewardConfig) -> list[Unit]:
    """The valid split's responses (all of them: the human responses are the reference the
    policy's samples are compared against), one unit each."""
    units = []
    for d in cfg.data:
        com = community_name(d)
        df = read_table(d, schema.RESPONSES_FILE, ("thread_id", "prompt", "response", "split"), "valid")
        for r in df.itertuples(index=False):
            p = format_prompt(r.prompt, com, cfg.community_prefix)
            units.append(Unit(f"{com}/{r.thread_id}", [(p, r.response)]))
    return units


# ---- combine -----------------------------------------------------------------------------------
def combine(paths: list[str], weights: list[float], out: str | Path, overwrite: bool = False) -> Path:
    """Write a composite reward model directory (weighted sum of normalised rewards)."""
    from ambient_rlhf.models.heads import CompositeReward, load_reward_model

    if len(paths) < 1:
        raise AmbientError("rm combine: give at least one reward model directory")
    if len(weights) != len(paths):
        raise AmbientError(f"rm combine: {len(paths)} models but {len(weights)} weights (--weights w1,w2,...)")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise AmbientError(f"{out}: output directory exists; pass --overwrite or another --out")
    members = [load_reward_model(p) for p in paths]
    comp = CompositeReward(members, weights, [str(Path(p).resolve()) for p in paths])
    comp.save_pretrained(out)
    write_manifest(out, "rm-combine", {"members": paths, "weights": weights}, inputs=paths)
    return out


# ---- command line --------------------------------------------------------------------------------
def _cli_eval(argv: list[str]) -> int:
    from ambient_rlhf.cli import common_parser
    from ambient_rlhf.eval.reward_eval import evaluate_reward, format_summary

    p = argparse.ArgumentParser(prog="ambient rm eval", parents=[common_parser()],
                                description="evaluate a reward model on a data directory's pairs, with baselines")
    p.add_argument("--model", required=True, help="reward model directory (ambient rm / rm combine)")
    p.add_argument("--data", required=True, help="data directory (any community)")
    p.add_argument("--split", default="test")
    p.add_argument("--out", default=None, help="where eval.json and plots go (default MODEL/eval/<community>-<split>)")
    p.add_argument("--loglik-model", default="auto", help="auto | none | self | a model for the log-likelihood baseline")
    p.add_argument("--max-pairs", type=int, default=0, help="evaluate at most this many pairs (whole threads; 0 = all)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--feature-cache", default=None, help="feature_cache directory of a head-only model's training")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    res = evaluate_reward(args.model, args.data, split=args.split, out=args.out, loglik_model=args.loglik_model,
                          max_pairs=args.max_pairs, batch_size=args.batch_size, feature_cache=args.feature_cache)
    print(format_summary(res))
    return 0


def _cli_combine(argv: list[str]) -> int:
    from ambient_rlhf.cli import common_parser

    p = argparse.ArgumentParser(prog="ambient rm combine", parents=[common_parser()],
                                description="weighted sum of normalised rewards, usable as one reward model")
    p.add_argument("models", nargs="+")
    p.add_argument("--weights", default=None, help="comma-separated, one per model (default: all 1)")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    try:
        w = [float(x) for x in args.weights.split(",")] if args.weights else [1.0] * len(args.models)
    except ValueError:
        raise AmbientError(f"--weights {args.weights!r}: expected numbers separated by commas") from None
    print(combine(args.models, w, args.out, overwrite=args.overwrite))
    return 0


def cli(argv: list[str]) -> int:
    if argv and argv[0] == "eval":
        return _cli_eval(argv[1:])
    if argv and argv[0] == "combine":
        return _cli_combine(argv[1:])
    from ambient_rlhf.cli import common_parser, split_overrides

    rest, overrides = split_overrides(argv)
    p = argparse.ArgumentParser(prog="ambient rm", parents=[common_parser()],
                                description="train a reward model (subcommands: eval, combine)",
                                epilog="any config key as key=value; --help-config lists them")
    p.add_argument("--data", nargs="+", default=None, help="data directories (several = one merged model)")
    p.add_argument("--model", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--objective", default=None, choices=OBJECTIVES)
    p.add_argument("--train-half", default=None, choices=("all", "a", "b"))
    p.add_argument("--train-layers", type=int, default=None, help="-1 all, 0 head only, N top layers")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(rest)
    setup_logging(args.verbose)
    if args.help_config:
        print(config_help(RewardConfig))
        return 0
    flags = []
    if args.data:
        flags.append("data=" + ",".join(args.data))
    for key, val in (("model", args.model), ("out", args.out), ("objective", args.objective),
                     ("train_half", args.train_half), ("train_layers", args.train_layers)):
        if val is not None:
            flags.append(f"{key}={val}")
    if args.resume:
        flags.append("resume=true")
    if args.overwrite:
        flags.append("overwrite=true")
    cfg = load_config(RewardConfig, args.config, flags + overrides)
    out = train_reward(cfg)
    if int(os.environ.get("RANK", "0")) == 0:  # one line from several processes
        print(out)
    return 0
