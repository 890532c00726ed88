"""How far a reward model's score moves when it reads chat-template text instead of its own rendering.

    python benchmarks/chat_template_gap.py --rm RM_DIR --data DATA_DIR [--split test] [--n 100]

Both scores come from the saved directory through plain transformers
(``AutoModelForSequenceClassification`` + ``config.ambient_reward``):

* ``rendering``: ``RewardInputs.from_pretrained(RM_DIR).batch(...)``, what the model was trained on;
* ``chat template``: ``tokenizer.apply_chat_template([user, assistant], tokenize=False)``
  tokenised without special tokens, as TRL's GRPO / RLOO score a conversational sample
  (the prompt is not cut to the model's budget; the text ends with a newline after the
  end-of-turn token);
* ``chat template, newline dropped``: the same text without its last newline.

Prints the number of texts, how many the rendering cut, and for each variant the mean and
largest absolute difference to the rendering (in reward units: rewards are normalised to
standard deviation 1 on reference responses) and the Spearman correlation with it.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import torch


def main(argv=None) -> dict:
    from transformers import AutoModelForSequenceClassification

    from ambient_rlhf.models.heads import reward_from_logits
    from ambient_rlhf.models.reward_inputs import RewardInputs, prompt_text
    from ambient_rlhf.stats import spearman

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rm", required=True, help="reward model directory (ambient rm)")
    ap.add_argument("--data", required=True, help="data directory with responses.parquet")
    ap.add_argument("--split", default="test")
    ap.add_argument("--n", type=int, default=100, help="responses scored (the first of the split, seeded sample)")
    ap.add_argument("--community", default=None, help="community for the prefix (default: the data dir's)")
    ap.add_argument("--batch", type=int, default=8)
    a = ap.parse_args(argv)

    from ambient_rlhf.data.tables import community_name

    df = pd.read_parquet(f"{a.data}/responses.parquet")
    df = df[df["split"] == a.split].sample(frac=1.0, random_state=0).head(a.n)
    prompts, responses = df["prompt"].tolist(), df["response"].tolist()
    community = a.community or community_name(a.data)
    inputs = RewardInputs.from_pretrained(a.rm)
    tok = inputs.tok
    model = AutoModelForSequenceClassification.from_pretrained(a.rm, dtype=torch.float32).eval()
    spec = inputs.spec

    def score(batch) -> np.ndarray:
        with torch.no_grad():
            return reward_from_logits(model(**batch).logits, model.config.ambient_reward).numpy()

    def chat_texts(drop_newline: bool) -> list[str]:
        out = []
        for p, r in zip(prompts, responses):
            q = prompt_text(p, community, spec.community_prefix)
            t = tok.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": r}],
                                        tokenize=False)
            out.append(t[:-1] if drop_newline and t.endswith("\n") else t)
        return out

    ours, chat, chat_nl = [], [], []
    cut = 0
    for s in range(0, len(prompts), a.batch):
        sl = slice(s, s + a.batch)
        ours.append(score(inputs.batch(prompts[sl], responses[sl], [community] * len(prompts[sl]))))
        for texts, acc in ((chat_texts(False)[sl], chat), (chat_texts(True)[sl], chat_nl)):
            enc = tok(text=texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
            acc.append(score({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}))
    for p, r in zip(prompts, responses):
        e = inputs.encode(p, r, community)
        cut += e.prompt_truncated or e.response_truncated
    ours_a = np.concatenate(ours)
    res = {"rm": a.rm, "data": a.data, "split": a.split, "n": len(prompts), "cut_by_rendering": cut,
           "reward_std": float(ours_a.std())}
    for name, acc in (("chat_template", chat), ("chat_template_no_final_newline", chat_nl)):
        v = np.concatenate(acc)
        d = np.abs(v - ours_a)
        res[name] = {"mean_abs_diff": float(d.mean()), "max_abs_diff": float(d.max()),
                     "spearman": float(spearman(v, ours_a))}
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
