"""Test helpers shared across test modules (not part of the package).

``make_data_dir`` writes a small data directory that follows the contract in
``ambient_rlhf.data.schema`` without running the data stage, so model-stage tests do
not depend on it.  Responses containing the marker word ``MARKER`` are planted as the
better ones (higher score, better tier), which tests can use as a learnable preference.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd

WORDS = ("apple river stone cloud paper lamp garden window music table forest letter "
         "summer mountain bridge coffee engine planet silver yellow").split()


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def make_data_dir(out: str | Path, n_threads: int = 24, k: int = 4, seed: int = 0, marker: str = "MARKER") -> Path:
    rng = random.Random(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, pairs, rankings = [], [], []
    tiers_by_rank = ["good", "ok", "ok", "bad", "bad", "bad"]
    for t in range(n_threads):
        tid = f"t{t:04d}"
        split = "train" if t % 6 < 4 else ("valid" if t % 6 == 4 else "test")
        prompt = "Question: " + _sentence(rng, 8) + "?"
        p_created = 1_600_000_000 + t * 1000
        resp = []
        for j in range(k):
            good = j < k // 2
            text = _sentence(rng, rng.randint(4, 10))
            if good:
                text = f"{marker} " + text
            score = (20 + rng.randint(0, 10)) if good else rng.randint(0, 5)
            resp.append((f"{tid}_r{j}", text, score, p_created + 60 * (j + 1)))
        resp.sort(key=lambda r: -r[2])
        for rank, (rid, text, score, created) in enumerate(resp):
            adjusted = float(k - rank) - (k + 1) / 2
            rows.append(dict(
                thread_id=tid, response_id=rid, prompt=prompt, response=text, score=score,
                created_utc=created, prompt_score=50, prompt_created_utc=p_created, rank=rank,
                rank_z=float(rank), delay_z=0.0, adjusted=adjusted,
                tier=tiers_by_rank[min(rank, 5)] if k > 2 else ("good" if rank == 0 else "bad"),
                reply_sentiment=(0.5 if marker in text else -0.5) if rank % 2 == 0 else None,
                split=split,
            ))
        for a in resp:
            for b in resp:
                if a[2] > b[2] and (marker in a[1]) and (marker not in b[1]):
                    pairs.append(dict(
                        thread_id=tid, prompt=prompt, chosen=a[1], rejected=b[1], chosen_score=a[2],
                        rejected_score=b[2], chosen_created_utc=a[3], rejected_created_utc=b[3],
                        score_ratio=a[2] / max(b[2], 1), seconds_difference=a[3] - b[3], split=split,
                    ))
        rankings.append(dict(thread_id=tid, prompt=prompt, responses=[r[1] for r in resp],
                             scores=[r[2] for r in resp], adjusted=[float(k - i) - (k + 1) / 2 for i in range(k)],
                             split=split))
    pd.DataFrame(rows).to_parquet(out / "responses.parquet", index=False)
    pd.DataFrame(pairs).to_parquet(out / "pairs.parquet", index=False)
    pd.DataFrame(rankings).to_parquet(out / "rankings.parquet", index=False)
    (out / "manifest.json").write_text(json.dumps({"stage": "data", "synthetic": True}) + "\n")
    return out


def prompt_length_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """A ``python:helpers:prompt_length_reward`` RL reward that ignores the response: the
    prompt's length in characters.  Its scores are known before sampling, so RL tests can
    derive their expectations from the prompts alone."""
    return [float(len(p)) for p in prompts]


def save_earlier_format(rm, out: str | Path, tokenizer) -> Path:
    """Write ``rm`` (a ``ScalarHeadModel``) as the reward-model directories written before
    the sequence-classification layout: the causal LM's own ``save_pretrained`` output, the
    raw head in ``reward_head.safetensors`` and ``reward_config.json`` without ``format``."""
    from safetensors.torch import save_file

    out = Path(out)
    rm.lm.save_pretrained(out)
    tokenizer.save_pretrained(out)
    save_file({k: v.contiguous() for k, v in rm.head.state_dict().items()}, str(out / "reward_head.safetensors"))
    cfg = {"kind": rm.kind, "n_outputs": rm.head.out_features, "tier_values": list(rm.tier_values),
           "norm_mean": rm.norm_mean, "norm_std": rm.norm_std, **rm.meta}
    (out / "reward_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out


def head_rm_config(data, out, *more: str, eval_steps: int = 0):
    """``ambient rm`` config of a head-only tiny-random reward model on ``data`` (no final
    evaluation), with ``more`` overrides."""
    from ambient_rlhf.config import load_config
    from ambient_rlhf.train.reward import RewardConfig

    return load_config(RewardConfig, None, [f"data={data}", "model=tiny-random", f"out={out}", "eval_split=",
                                            f"eval_steps={eval_steps}", "train_layers=0", "learning_rate=1e-2",
                                            *more])
