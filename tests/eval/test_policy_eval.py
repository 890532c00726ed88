"""``ambient eval`` on tiny random models (no training needed)."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ambient_rlhf import AmbientError
from ambient_rlhf.config import check_documented
from ambient_rlhf.eval.policy_eval import EvalConfig, evaluate_policy, summarize, verdict
from helpers import make_data_dir


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_model_path):
    """A judge (tiny body + scalar head) and a policy (tiny with perturbed weights)."""
    from ambient_rlhf.models.heads import ScalarHeadModel
    from ambient_rlhf.models.load import load_causal_lm, load_tokenizer

    root = tmp_path_factory.mktemp("models")
    tok = load_tokenizer(tiny_model_path)
    torch.manual_seed(0)
    judge = ScalarHeadModel(load_causal_lm(tiny_model_path))
    judge.save_pretrained(root / "judge", tok)
    pol = load_causal_lm(tiny_model_path)
    with torch.no_grad():
        for p in pol.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pol.save_pretrained(root / "policy")
    tok.save_pretrained(root / "policy")
    data = make_data_dir(root / "data", n_threads=24, k=2)  # 4 test threads (t % 6 == 5)
    return {"judge": str(root / "judge"), "policy": str(root / "policy"), "reference": tiny_model_path,
            "data": str(data)}


def _cfg(models, out, **kw):
    base = dict(policy=models["policy"], reference=models["reference"], judge=models["judge"], data=models["data"],
                out=str(out), n_prompts=4, samples_per_prompt=2, max_new_tokens=6, batch_size=8,
                bootstrap_resamples=200)
    base.update(kw)
    return EvalConfig(**base)


def test_every_config_field_is_documented():
    assert check_documented(EvalConfig) == []


def test_policy_equal_to_reference_ties_everywhere(models, tmp_path):
    # Same weights and the same sampling seed -> identical answers -> identical judge
    # scores: every pair ties (win rate exactly 0.5, interval [0.5, 0.5]) and each
    # sequence's log-prob is the same under both models (KL exactly 0).
    r = evaluate_policy(_cfg(models, tmp_path / "e", policy=models["reference"]))
    assert r["ties"] == 8 and r["wins"] == r["losses"] == 0
    assert (r["win_rate"]["value"], r["win_rate"]["low"], r["win_rate"]["high"]) == (0.5, 0.5, 0.5)
    assert r["kl"]["value"] == 0.0
    assert r["verdict"] == "unclear"


def test_eval_outputs_kl_and_scores_match_direct_computation(models, tmp_path):
    from ambient_rlhf.models.reward_model import load_reward_model
    from ambient_rlhf.models.load import load_causal_lm, load_tokenizer
    from ambient_rlhf.models.tokenize import encode_pair

    calls = []

    def utility(prompt, response):  # a stand-in for the simulated community's utility
        calls.append(response)
        return float(len(response))

    cfg = _cfg(models, tmp_path / "e", proxy=models["judge"])
    r = evaluate_policy(cfg, true_utility=utility)
    out = tmp_path / "e"
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and len(calls) == 16  # 4 prompts x 2 samples, both sides
    assert len(pd.read_csv(out / "samples.csv")) == 8
    assert json.loads((out / "manifest.json").read_text())["stage"] == "eval"
    assert json.loads((out / "eval.json").read_text())["n_pairs"] == 8
    assert {row["thread_id"] for row in rows} == {"t0005", "t0011", "t0017", "t0023"}

    # win counts agree with the per-sample scores
    wins = sum(row["policy_score"] > row["reference_score"] for row in rows)
    ties = sum(row["policy_score"] == row["reference_score"] for row in rows)
    assert (r["wins"], r["ties"]) == (wins, ties)
    assert r["win_rate"]["value"] == pytest.approx((wins + 0.5 * ties) / 8)
    assert r["win_rate"]["low"] <= r["win_rate"]["value"] <= r["win_rate"]["high"]

    # KL of one sample, recomputed without padding or logits_to_keep:
    # sum over response tokens (EOS included when the answer stopped) of
    # log softmax(logits / T) under the policy minus the same under the reference.
    tok = load_tokenizer(models["reference"])
    row = rows[0]
    e = encode_pair(tok, row["prompt"], row["policy"], cfg.max_prompt_tokens, cfg.max_new_tokens)
    ids = torch.tensor([e.input_ids])

    def seq_logp(path):
        m = load_causal_lm(path)
        with torch.no_grad():
            lp = torch.log_softmax(m(ids).logits[0, :-1] / cfg.temperature, -1)
        tgt = ids[0, 1:]
        return lp[torch.arange(len(tgt)), tgt][e.prompt_len - 1:].sum().item()

    assert row["kl"] == pytest.approx(seq_logp(models["policy"]) - seq_logp(models["reference"]), abs=1e-4)
    assert row["policy_stopped"] == (not e.response_truncated)

    # the judge's score of that answer, scored alone (no batch, no padding)
    rm = load_reward_model(models["judge"])
    with torch.no_grad():
        s = rm.reward(ids, torch.ones_like(ids)).item()
    assert row["policy_score"] == pytest.approx(s, abs=1e-5)
    # the proxy is the same model here, so it agrees with the judge
    assert row["policy_proxy"] == pytest.approx(row["policy_score"], abs=1e-6)
    assert row["policy_true_utility"] == float(len(row["policy"]))
    assert set(r["true_utility"]) >= {"policy", "reference", "difference", "win_rate", "spearman_judge", "spearman_proxy"}
    assert len(r["table"]) == 4 and all(t["sample"] == 0 for t in r["table"])


def test_cli_writes_eval_and_refuses_to_overwrite(models, tmp_path, capsys):
    from ambient_rlhf.cli import main

    out = tmp_path / "cli"
    args = ["eval", "--policy", models["policy"], "--reference", models["reference"], "--judge", models["judge"],
            "--data", models["data"], "--out", str(out), "n_prompts=2", "samples_per_prompt=1", "max_new_tokens=4",
            "bootstrap_resamples=100"]
    assert main(args) == 0
    assert "win rate of policy over reference" in capsys.readouterr().out
    r = json.loads((out / "eval.json").read_text())
    assert r["n_pairs"] == 2 and r["goal"] is None
    assert main(args) == 2  # exists, no --overwrite
    assert "output directory exists" in capsys.readouterr().err


def test_goal_conditioned_policy_against_plain_reference(models, tmp_path, tiny_model_path):
    # the tier-conditioned model has the goal tokens (a bigger vocabulary); the reference
    # does not.  The policy is prompted with <|tier:good|>, the reference without it.
    from ambient_rlhf.models.load import load_causal_lm, load_tokenizer
    from ambient_rlhf.models.tokenize import add_goal_tokens

    tok = load_tokenizer(tiny_model_path)
    lm = load_causal_lm(tiny_model_path)
    assert add_goal_tokens(tok, lm) == 3
    lm.save_pretrained(tmp_path / "tier")
    tok.save_pretrained(tmp_path / "tier")
    cfg = _cfg(models, tmp_path / "g", policy=str(tmp_path / "tier"), goal="good", n_prompts=2, samples_per_prompt=1)
    r = evaluate_policy(cfg)
    assert r["goal"] == "good" and r["n_pairs"] == 2
    # the two models share every weight but the three new vocabulary rows, and the
    # policy's prompt holds the goal token: the log-probs of an answer differ, KL != 0
    assert all(t["kl"] != 0.0 for t in r["table"])
    assert json.loads((tmp_path / "g" / "manifest.json").read_text())["config"]["goal"] == "good"


def test_goal_needs_a_tier_conditioned_policy(models, tmp_path):
    with pytest.raises(AmbientError, match="no goal tokens"):
        evaluate_policy(_cfg(models, tmp_path / "g", goal="good", n_prompts=1, samples_per_prompt=1))
    assert not (tmp_path / "g").exists()  # nothing half-written


def test_clear_errors_for_bad_input(models, tmp_path):
    with pytest.raises(AmbientError, match="'judge' is required"):
        evaluate_policy(_cfg(models, tmp_path / "x", judge=""))
    with pytest.raises(AmbientError, match="no threads in split 'nope'"):
        evaluate_policy(_cfg(models, tmp_path / "x", split="nope"))
    with pytest.raises(AmbientError, match="responses.parquet: not found"):
        evaluate_policy(_cfg(models, tmp_path / "x", data=str(tmp_path)))


def _rows(scores):
    """Hand-made sample rows: (thread, policy score, reference score, policy text)."""
    return [dict(thread_id=t, sample=i, prompt="q", reference="a b", policy=txt, reference_score=rs, policy_score=ps,
                 kl=1.0, policy_tokens=3, reference_tokens=2, policy_stopped=True, reference_stopped=False)
            for i, (t, ps, rs, txt) in enumerate(scores)]


def test_summarize_by_hand():
    # outcomes: win, win, tie, loss -> (1 + 1 + .5 + 0) / 4 = 0.625; per-thread means
    # x: 1, y: 0.25 -> value 0.625 as well (equal sizes)
    rows = _rows([("x", 2, 1, "c c d"), ("x", 3, 0, "c d e"), ("y", 1, 1, "f f f"), ("y", 0, 5, "g h g")])
    r = summarize(rows, EvalConfig(bootstrap_resamples=300))
    assert (r["wins"], r["ties"], r["losses"]) == (2, 1, 1)
    assert r["win_rate"]["value"] == 0.625 and r["win_rate"]["n"] == 2
    # bootstrap over 2 threads: resamples are {x,x}=1, {y,y}=0.25, mixed=0.625
    assert r["win_rate"]["low"] == 0.25 and r["win_rate"]["high"] == 1.0
    # per token: 4 answers x KL 1 over 4 x (3 tokens + EOS) = 0.25
    assert r["kl"]["value"] == 1.0 and r["kl"]["per_token"] == 0.25
    # policy unigrams: c c d c d e f f f g h g -> {c,d,e,f,g,h} = 6/12
    assert r["distinct"]["policy"]["distinct_1"] == 0.5
    assert r["length"]["policy"]["stopped_rate"] == 1.0 and r["length"]["reference"]["stopped_rate"] == 0.0
    # mean score difference (1 + 3 + 0 - 5) / 4 = -0.25
    assert r["judge_score"]["difference"]["value"] == -0.25
    assert "true_utility" not in r and "proxy_score" not in r


def test_length_controlled_win_rate_by_hand():
    from ambient_rlhf.eval.policy_summary import length_controlled_win_rate

    # 4 answers 10 tokens longer than the reference (3 wins, 1 loss) and 2 answers 10 shorter
    # (1 win, 1 loss): raw win rate 4/6.  d = +-10, std(d) = sqrt(8/9) * 10 (mean 10/3), so
    # x = tanh(d / std) = +-a; the fit is saturated: b + phi a = logit(3/4) = ln 3 and
    # b - phi a = logit(1/2) = 0, so b = ln(3) / 2 and the LC win rate is
    # sigmoid(ln(3) / 2) = sqrt(3) / (1 + sqrt(3)) = 0.6340
    y = np.array([1, 1, 1, 0, 1, 0], float)
    d = np.array([10, 10, 10, 10, -10, -10], float)
    r = length_controlled_win_rate(y, d, list("abcdef"), n_resamples=200)
    assert r["value"] == pytest.approx(math.sqrt(3) / (1 + math.sqrt(3)), abs=1e-4)
    a = math.tanh(10 / (math.sqrt(8 / 9) * 10))
    assert r["length_slope"] == pytest.approx(math.log(3) / 2 / a, abs=1e-3)
    assert r["n"] == 6 and r["low"] <= r["value"] <= r["high"]
    # equal lengths: nothing to adjust, the LC win rate is the win rate (logit of the mean)
    same = length_controlled_win_rate(np.array([1, 1, 0, 0.5]), np.zeros(4), list("abcd"), n_resamples=50)
    assert same["value"] == pytest.approx(0.625, abs=1e-4)
    # in summarize: every row has policy 3 tokens vs reference 2, so x is constant 0 (std 0)
    r = summarize(_rows([("x", 2, 1, "c c d"), ("x", 3, 0, "c d e"), ("y", 1, 1, "f f f"), ("y", 0, 5, "g h g")]),
                  EvalConfig(bootstrap_resamples=50))
    assert r["length_controlled_win_rate"]["value"] == pytest.approx(0.625, abs=1e-4)


def test_verdict_reads_the_interval():
    assert verdict({"value": 0.6, "low": 0.51, "high": 0.7}) == "better"
    assert verdict({"value": 0.4, "low": 0.3, "high": 0.49}) == "worse"
    assert verdict({"value": 0.6, "low": 0.5, "high": 0.7}) == "unclear"
    assert verdict({"value": math.nan, "low": math.nan, "high": math.nan}) == "unclear"


def test_sample_cache_reads_back_what_sampling_would_give(models, tmp_path):
    cache = tmp_path / "cache"

    def answers(out):
        rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
        return [r["policy"] for r in rows], [r["reference"] for r in rows]

    evaluate_policy(_cfg(models, tmp_path / "a", sample_cache=str(cache)))  # samples both sides
    assert len(list(cache.glob("*.json"))) == 2
    # sides swapped: both are read back, and equal what sampling without a cache gives
    evaluate_policy(_cfg(models, tmp_path / "b", policy=models["reference"], reference=models["policy"],
                         sample_cache=str(cache)))
    evaluate_policy(_cfg(models, tmp_path / "plain", policy=models["reference"], reference=models["policy"]))
    assert len(list(cache.glob("*.json"))) == 2
    assert answers(tmp_path / "b") == answers(tmp_path / "plain")
    pol_a, ref_a = answers(tmp_path / "a")
    assert answers(tmp_path / "b") == (ref_a, pol_a) and pol_a != ref_a
    # what is read back is the file: mark the policy directory's entry
    entry = next(f for f in cache.glob("*.json") if json.loads(f.read_text())["model"] == models["policy"])
    got = json.loads(entry.read_text())
    got["answers"] = ["marked"] * len(got["answers"])
    entry.write_text(json.dumps(got))
    evaluate_policy(_cfg(models, tmp_path / "c", sample_cache=str(cache)))
    assert answers(tmp_path / "c")[0] == ["marked"] * 8
    # another seed, or a rewritten model directory, is another key: sampled again
    evaluate_policy(_cfg(models, tmp_path / "d", sample_cache=str(cache), seed=1))
    assert len(list(cache.glob("*.json"))) == 4
    w = next(p for p in Path(models["policy"]).iterdir() if p.suffix == ".safetensors")
    st = w.stat()
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    evaluate_policy(_cfg(models, tmp_path / "e", sample_cache=str(cache)))
    assert answers(tmp_path / "e")[0] == pol_a and len(list(cache.glob("*.json"))) == 5
