"""The steering test (one tier-conditioned model, goal good against goal bad) and the
token-shift analysis, on a tiny random model with goal tokens."""

import json

import numpy as np
import pytest
import torch

from ambient_rlhf.eval.goal_shift import position_kl
from ambient_rlhf.eval.policy_eval import EvalConfig, evaluate_policy, summarize
from helpers import make_data_dir


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_model_path):
    from ambient_rlhf.models.heads import ScalarHeadModel
    from ambient_rlhf.models.load import load_causal_lm, load_tokenizer
    from ambient_rlhf.models.tokenize import add_goal_tokens

    root = tmp_path_factory.mktemp("steer")
    tok = load_tokenizer(tiny_model_path)
    torch.manual_seed(0)
    ScalarHeadModel(load_causal_lm(tiny_model_path)).save_pretrained(root / "judge", tok)
    lm = load_causal_lm(tiny_model_path)
    assert add_goal_tokens(tok, lm) == 3
    # distinct, strong goal rows, so that the two goals' distributions are far apart
    # (the words' embeddings move a random tiny model by only ~1e-4 nats)
    emb = lm.get_input_embeddings().weight
    with torch.no_grad():
        for t in ("<|tier:good|>", "<|tier:ok|>", "<|tier:bad|>"):
            emb[tok.convert_tokens_to_ids(t)] = 3 * torch.randn(emb.shape[1])
    lm.save_pretrained(root / "tier")
    tok.save_pretrained(root / "tier")
    data = make_data_dir(root / "data", n_threads=24, k=2)  # 4 test threads
    return {"judge": str(root / "judge"), "tier": str(root / "tier"), "data": str(data)}


def _cfg(models, out, **kw):
    base = dict(policy=models["tier"], reference=models["tier"], judge=models["judge"], data=models["data"],
                out=str(out), goal="good", reference_goal="bad", n_prompts=4, samples_per_prompt=1,
                max_new_tokens=6, batch_size=3, bootstrap_resamples=200, token_shift_top=5)
    base.update(kw)
    return EvalConfig(**base)


def _length(prompt, response):  # a stand-in for the simulated community's hidden utility
    return float(len(response))


def test_a_goal_that_changes_nothing_gives_an_interval_at_zero(models, tmp_path):
    # goal good against goal good: the same prompts, weights and seed give the same
    # answers, so every difference is exactly 0 and its interval is [0, 0]
    r = evaluate_policy(_cfg(models, tmp_path / "e", reference_goal="good"), true_utility=_length)
    st = r["steering"]
    assert st["by"] == "true_utility" and st["same_model"] is True
    for key in ("true_utility", "judge", "length_tokens"):
        assert (st[key]["value"], st[key]["low"], st[key]["high"]) == (0.0, 0.0, 0.0)
    assert st["verdict"] == "no clear effect"
    assert r["kl"]["value"] == 0.0
    assert "token_shift" not in r  # the inputs are identical: nothing to analyse


def test_good_against_bad_samples_both_goals_and_measures_the_shift(models, tmp_path):
    from ambient_rlhf.models.load import load_causal_lm, load_tokenizer
    from ambient_rlhf.models.tokenize import encode_pair, goal_token_ids
    from ambient_rlhf.train.generate import generate

    cfg = _cfg(models, tmp_path / "e")
    r = evaluate_policy(cfg, true_utility=_length)
    rows = [json.loads(x) for x in (tmp_path / "e" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and r["goal"] == "good"

    # each side is exactly what `generate` samples for that goal with the eval's seed
    lm, tok = load_causal_lm(models["tier"]), load_tokenizer(models["tier"], padding_side="left")
    prompts = [row["prompt"] for row in rows]
    kw = dict(max_new_tokens=6, temperature=0.7, batch_size=3, seed=0, max_prompt_tokens=cfg.max_prompt_tokens)
    assert generate((lm, tok), prompts, goal="good", **kw) == [row["policy"] for row in rows]
    assert generate((lm, tok), prompts, goal="bad", **kw) == [row["reference"] for row in rows]

    # the steering block is good minus bad, row by row, averaged
    st = r["steering"]
    d = [len(row["policy"]) - len(row["reference"]) for row in rows]
    assert st["true_utility"]["value"] == pytest.approx(np.mean(d))
    dj = [row["policy_score"] - row["reference_score"] for row in rows]
    assert st["judge"]["value"] == pytest.approx(np.mean(dj))
    assert st["length_tokens"]["value"] == pytest.approx(np.mean([row["policy_tokens"] - row["reference_tokens"]
                                                                  for row in rows]))
    manifest = json.loads((tmp_path / "e" / "manifest.json").read_text())
    assert manifest["config"]["reference_goal"] == "bad"

    # token_shift, recomputed one answer at a time without padding: the exact KL at each
    # response position from torch.distributions, and the vocabulary averages
    T = cfg.temperature
    kl_seq, first, pa_sum, pb_sum, n_pos = [], [], 0, 0, 0
    for side, (ga, gb) in (("policy", ("good", "bad")), ("reference", ("bad", "good"))):
        for row in rows:
            dists = []
            for g in (ga, gb):
                e = encode_pair(tok, row["prompt"], row[side], cfg.max_prompt_tokens, cfg.max_new_tokens, "auto", g)
                with torch.no_grad():
                    logits = lm(torch.tensor([e.input_ids])).logits[0, e.prompt_len - 1:-1] / T
                dists.append(torch.distributions.Categorical(logits=logits))
            kl = torch.distributions.kl_divergence(dists[0], dists[1])  # (n_response_tokens,)
            probs = {"good": dists[0].probs if ga == "good" else dists[1].probs,
                     "bad": dists[1].probs if ga == "good" else dists[0].probs}
            pa_sum = pa_sum + probs["good"].sum(0)
            pb_sum = pb_sum + probs["bad"].sum(0)
            n_pos += len(kl)
            if side == "policy":
                kl_seq.append(kl.sum().item())
                first.append(kl[0].item())
    ts = r["token_shift"]
    assert ts["kl"]["sequence"]["value"] == pytest.approx(np.mean(kl_seq), rel=1e-3)
    assert ts["kl"]["first_token"] == pytest.approx(np.mean(first), rel=1e-3, abs=1e-6)
    assert ts["by_position"]["kl"][0] == pytest.approx(np.mean(first), rel=1e-3, abs=1e-6)
    assert ts["positions"] == n_pos
    diff = (pa_sum - pb_sum) / n_pos
    diff[goal_token_ids(tok)] = 0  # never sampled, so never listed
    top = torch.argsort(diff, descending=True)[:3].tolist()
    assert [t["id"] for t in ts["gained"]][:3] == top
    assert ts["gained"][0]["p_goal"] == pytest.approx((pa_sum / n_pos)[top[0]].item(), rel=1e-4)
    assert ts["gained"][0]["difference"] == pytest.approx(diff[top[0]].item(), rel=1e-3)
    assert [t["id"] for t in ts["lost"]][:3] == torch.argsort(diff)[:3].tolist()
    assert ts["gained"][0]["token"] == tok.decode([top[0]])
    # the sampled k1 estimate and the exact KL estimate the same quantity; both positive here
    assert ts["kl"]["sequence"]["value"] > 0 and ts["reverse_kl"]["sequence"]["value"] > 0


def test_position_kl_matches_torch_distributions():
    torch.manual_seed(1)
    a, b = torch.randn(3, 5, 11), torch.randn(3, 5, 11)
    want = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=a),
                                             torch.distributions.Categorical(logits=b))
    got = position_kl(torch.log_softmax(a, -1), torch.log_softmax(b, -1))
    assert torch.allclose(got, want, atol=1e-6)
    assert position_kl(torch.log_softmax(a, -1), torch.log_softmax(a, -1)).abs().max() < 1e-6


def _rows(diffs):
    """One row per (thread, true-utility difference), good side = 1 + d, bad side = 1."""
    return [dict(thread_id=t, sample=0, prompt="q", reference="a", policy="b", reference_score=0.0,
                 policy_score=float(d), kl=0.5, policy_tokens=4 + int(d), reference_tokens=4, policy_stopped=True,
                 reference_stopped=True, policy_true_utility=1.0 + d, reference_true_utility=1.0)
            for t, d in diffs]


@pytest.mark.parametrize("diffs, verdict", [
    ([("x", 1), ("y", 2), ("z", 1)], "steers"),       # every thread above 0: all resamples > 0
    ([("x", -1), ("y", -2), ("z", -1)], "reversed"),  # every thread below 0
    ([("x", 1), ("y", -1), ("z", 0)], "no clear effect"),  # resamples {x,x,x}=1 and {y,y,y}=-1 both occur
])
def test_steering_verdict_reads_the_interval(diffs, verdict):
    cfg = EvalConfig(goal="good", reference_goal="bad", bootstrap_resamples=500, policy="m", reference="m")
    st = summarize(_rows(diffs), cfg)["steering"]
    assert st["verdict"] == verdict and st["by"] == "true_utility"
    assert st["true_utility"]["value"] == pytest.approx(np.mean([d for _, d in diffs]))
    # length: good has 4 + d tokens, bad 4
    assert st["length_tokens"]["value"] == pytest.approx(np.mean([d for _, d in diffs]))


def test_without_a_reference_goal_there_is_no_steering_block():
    r = summarize(_rows([("x", 1)]), EvalConfig(goal="good", bootstrap_resamples=50))
    assert "steering" not in r
    assert r["length"]["difference"]["value"] == 1.0


def test_cli_prints_the_steering_line(models, tmp_path, capsys):
    from ambient_rlhf.cli import main

    args = ["eval", "--policy", models["tier"], "--reference", models["tier"], "--goal", "good", "--reference-goal",
            "bad", "--judge", models["judge"], "--data", models["data"], "--out", str(tmp_path / "c"),
            "n_prompts=2", "samples_per_prompt=1", "max_new_tokens=4", "bootstrap_resamples=50"]
    assert main(args) == 0
    assert "steering: goal good minus goal bad on the judge:" in capsys.readouterr().out  # not simulated data
    assert json.loads((tmp_path / "c" / "eval.json").read_text())["steering"]["by"] == "judge"


def test_steering_test_of_a_soft_prompt_model(models, tmp_path, tiny_model_path):
    # a frozen model with one soft prompt per tier: the goal selects a prompt, not a token;
    # the reference for the token shift is peft's own forward with the tier's adapter active
    from ambient_rlhf.models.load import load_causal_lm, load_tokenizer
    from ambient_rlhf.models.soft_prompt import wrap
    from ambient_rlhf.models.tokenize import encode_pair
    from ambient_rlhf.train.generate import generate

    tok = load_tokenizer(tiny_model_path)
    lm = wrap(load_causal_lm(tiny_model_path), tok, ["good", "ok", "bad"], 2, "a {name} answer")
    torch.manual_seed(3)
    with torch.no_grad():
        for n in lm.names:
            lm.peft.prompt_encoder[n].embedding.weight.copy_(3 * torch.randn(2, lm.config.hidden_size))
    lm.save_pretrained(tmp_path / "soft")
    tok.save_pretrained(tmp_path / "soft")
    soft = str(tmp_path / "soft")
    cfg = _cfg(models, tmp_path / "e", policy=soft, reference=soft, n_prompts=2)
    r = evaluate_policy(cfg, true_utility=_length)
    rows = [json.loads(x) for x in (tmp_path / "e" / "samples.jsonl").read_text().splitlines()]
    m = load_causal_lm(soft)
    ptok = load_tokenizer(soft, padding_side="left")
    kw = dict(max_new_tokens=6, temperature=0.7, batch_size=3, seed=0, max_prompt_tokens=cfg.max_prompt_tokens)
    assert generate((m, ptok), [x["prompt"] for x in rows], goal="bad", **kw) == [x["reference"] for x in rows]
    kl_seq = []
    for row in rows:
        e = encode_pair(ptok, row["prompt"], row["policy"], cfg.max_prompt_tokens, cfg.max_new_tokens)  # no goal token
        ids = torch.tensor([e.input_ids])
        lp = {}
        for g in ("good", "bad"):
            m.peft.set_adapter(g)
            with torch.no_grad():  # peft prepends 2 virtual tokens
                logits = m.peft(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, 2 + e.prompt_len - 1:-1]
            lp[g] = torch.log_softmax(logits / cfg.temperature, -1)
        kl_seq.append(float((lp["good"].exp() * (lp["good"] - lp["bad"])).sum()))
    assert r["token_shift"]["kl"]["sequence"]["value"] == pytest.approx(np.mean(kl_seq), rel=1e-3)
    assert r["token_shift"]["kl"]["sequence"]["value"] > 1e-3  # the prompts differ, so the distributions do
