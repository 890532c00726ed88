"""ambient rl on tiny models: learning, KL control, invariances, outputs, config."""

from __future__ import annotations

import json

import pytest
import torch

from ambient_rlhf.config import check_documented, load_config
from ambient_rlhf.logging import read_jsonl
from ambient_rlhf.train.rl import RLConfig, train_rl

NEWLINE = 198  # the token the peaked tiny model emits most often ("\n")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from helpers import make_data_dir

    return make_data_dir(tmp_path_factory.mktemp("rl") / "data")


@pytest.fixture(scope="module")
def peaked_model(tmp_path_factory, tiny_model_path):
    """tiny-random with its final norm scaled x10: logits spread enough that samples repeat
    a few tokens (a random tiny model is ~uniform over 49k tokens, which no count reward can
    move in a few steps).  At temperature 0.7 about half the sampled tokens are NEWLINE."""
    from ambient_rlhf.models.load import load_causal_lm, load_tokenizer

    out = tmp_path_factory.mktemp("rl") / "peaked"
    lm = load_causal_lm(tiny_model_path)
    with torch.no_grad():
        lm.model.norm.weight.mul_(10.0)
    lm.save_pretrained(out)
    load_tokenizer(tiny_model_path).save_pretrained(out)
    return str(out)


def _run(tmp_path, data_dir, model, algo, *overrides):
    cfg = load_config(RLConfig, None, [
        f"policy={model}", f"reward=token-count:{NEWLINE}", f"data={data_dir}", f"algo={algo}",
        f"out={tmp_path / algo}", "response_length=16", "missing_eos_score=null", "save_every=0", "lr=3e-4",
        *overrides])
    out = train_rl(cfg)
    return read_jsonl(out / "metrics.jsonl"), out


# PPO with lam=1: the value model starts at V = 0 (no reward model to start from), and with
# lam=0.95 the whitened GAE advantages of a fresh critic favour late tokens over early
# ones whatever the sample did (0.95^(T-t) R), which on 4 steps swamps the signal.
@pytest.mark.parametrize("algo,batch,extra", [("ppo", 8, "lam=1.0"), ("rloo", 4, "lam=0.95"),
                                              ("reinforce", 8, "lam=0.95")])
def test_each_algorithm_raises_the_reward(tmp_path, data_dir, peaked_model, algo, batch, extra):
    rows, _ = _run(tmp_path, data_dir, peaked_model, algo, "steps=4", f"batch_size={batch}", extra)
    scores = [r["objective/score"] for r in rows]
    # at seed 1 the first batch scores ~8 of 16 newline tokens; every algorithm reaches > 12
    # within 4 steps (a random policy stays at ~8 +- 1.5 per batch mean)
    assert scores[0] < 10.0
    assert max(scores[2:]) > 12.0 and scores[-1] > scores[0] + 3.0, scores
    for name in ("objective/kl", "objective/entropy", "objective/rlhf_reward", "ppo/clipfrac", "ppo/approxkl",
                 "ppo/ratio_mean", "ppo/ratio_max", "gen/length", "gen/eos_rate", "kl/beta", "time/generate",
                 "time/score", "time/reference", "time/train"):
        assert name in rows[-1], name
    if algo == "ppo":
        assert "ppo/value_loss" in rows[-1] and "ppo/explained_variance" in rows[-1]
    # the first minibatch of fresh samples is exactly on-policy
    assert rows[0]["objective/kl"] == pytest.approx(0.0, abs=1e-5)


def test_higher_beta_keeps_kl_lower(tmp_path, data_dir, peaked_model):
    # REINFORCE on the sequence reward score - beta * KL, advantages not whitened (whitening
    # cancels beta once every score is the same).  Observed at seed 1: beta=0.01 -> KL ~1.4
    # nats over the last 3 steps (score -> 15), beta=10 -> KL ~0.1 (score stays ~10)
    common = ("steps=6", "batch_size=8", "lr=1e-4", "kl.kind=fixed", "whiten_advantages=false")
    low, _ = _run(tmp_path / "lo", data_dir, peaked_model, "reinforce", *common, "kl.init_beta=0.01")
    high, _ = _run(tmp_path / "hi", data_dir, peaked_model, "reinforce", *common, "kl.init_beta=10.0")
    kl_low = sum(r["objective/kl"] for r in low[-3:]) / 3
    kl_high = sum(r["objective/kl"] for r in high[-3:]) / 3
    assert kl_low > 0.8 and kl_high < 0.4 * kl_low, (kl_low, kl_high)
    assert all(r["kl/beta"] == 10.0 for r in high)


def test_lora_reference_is_the_adapter_disabled_and_output_loads(tmp_path, data_dir, tiny_model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows, out = _run(tmp_path, data_dir, tiny_model_path, "ppo", "steps=2", "batch_size=4", "lora.enabled=true",
                     "lora.r=4", "lr=1e-2", "value_model=shared", "sample_every=1",
                     "reward=token-count:0-4095")  # ~8% of a random model's tokens: a non-zero signal
    # LoRA starts with B = 0: policy == reference at step 1, so the KL is exactly 0
    assert rows[0]["objective/kl"] == 0.0
    assert rows[1]["objective/kl"] != 0.0
    model = AutoModelForCausalLM.from_pretrained(out)  # merged, plain directory
    assert not any("lora" in n for n, _ in model.named_parameters())
    AutoTokenizer.from_pretrained(out)
    samples = read_jsonl(out / "samples.jsonl")
    assert [s["step"] for s in samples] == [1] * 4 + [2] * 4
    assert {"prompt", "response", "score", "kl"} <= set(samples[0])
    m = json.loads((out / "manifest.json").read_text())
    assert m["stage"] == "rl" and m["config"]["algo"] == "ppo"


def test_reward_model_scores_policy_tokens_and_inits_value_model(tmp_path, data_dir, tiny_model_path):
    """A reward-model directory as the reward: scored on the policy's own tokens, and the
    value model starts from it."""
    from ambient_rlhf.models.heads import ScalarHeadModel
    from ambient_rlhf.models.load import load_causal_lm, load_tokenizer

    rm_dir = tmp_path / "rm"
    torch.manual_seed(0)
    ScalarHeadModel(load_causal_lm(tiny_model_path)).save_pretrained(rm_dir, load_tokenizer(tiny_model_path))
    rows, out = _run(tmp_path, data_dir, tiny_model_path, "ppo", "steps=1", "batch_size=2", f"reward={rm_dir}",
                     "sample_every=1")
    assert rows[0]["objective/score"] != 0.0 and (out / "config.json").is_file()
    # the scorer reads the RM at the last real token of [prompt + response], whatever the padding
    from ambient_rlhf.train.rl import make_scorer

    tok = load_tokenizer(tiny_model_path)
    prompts = ["Why is the sky blue?", "Name a colour."]
    cfg = RLConfig(reward=str(rm_dir))
    scorer, rm = make_scorer(cfg, tok, prompts, torch.device("cpu"))
    resp = torch.tensor([[11, 12, 13, 2], [21, 2, 0, 0]])  # right-padded responses, EOS = 2
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    got = scorer([0, 1], resp, mask)
    for i, r in enumerate(([11, 12, 13, 2], [21, 2])):
        ids = scorer.rm_prompt_ids[i] + r
        with torch.no_grad():
            expect = rm.reward(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
        assert got[i].item() == pytest.approx(expect.item(), abs=1e-5)


def test_config_is_documented_and_rejects_unknown_keys():
    assert check_documented(RLConfig) == []
    from ambient_rlhf.config import ConfigError

    with pytest.raises(ConfigError, match="ppo_epoch"):
        load_config(RLConfig, None, ["ppo_epoch=3"])


def test_reward_spec_errors(tmp_path, data_dir, tiny_model_path):
    from ambient_rlhf import AmbientError

    not_rm = tmp_path / "not-an-rm"  # beside the output directory: an input holding it is refused first
    not_rm.mkdir()
    for spec, msg in (("token-count:abc", "token-count"), ("token-count:99999999", "outside"),
                      (str(not_rm), "not a reward-model directory"), ("python:nope_module:f", "cannot import")):
        with pytest.raises(AmbientError, match=msg):
            _run(tmp_path / "e", data_dir, tiny_model_path, "reinforce", "steps=1", f"reward={spec}", "overwrite=true")


def test_policy_with_goal_tokens_can_use_a_base_reward_model(tiny_model_path):
    """A tier-conditioned SFT policy has 3 goal tokens more than the base reward model: they
    are allowed (and dropped from what the RM scores); a different vocabulary is refused."""
    from ambient_rlhf.models.load import load_tokenizer
    from ambient_rlhf.models.tokenize import add_goal_tokens
    from ambient_rlhf.train.rl import policy_only_ids

    rm_tok, pol_tok = load_tokenizer(tiny_model_path), load_tokenizer(tiny_model_path)
    assert policy_only_ids(rm_tok, pol_tok) == []
    add_goal_tokens(pol_tok)
    extra = policy_only_ids(rm_tok, pol_tok)
    assert len(extra) == 3 and min(extra) >= len(rm_tok)
    assert policy_only_ids(pol_tok, rm_tok) is None  # the RM knows tokens the policy lacks


def test_existing_output_is_not_clobbered(tmp_path, data_dir, tiny_model_path):
    from ambient_rlhf import AmbientError

    out = tmp_path / "reinforce"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for extra in ((), ("resume=true",)):  # not even by --resume when there is no checkpoint
        with pytest.raises(AmbientError, match="output directory exists"):
            _run(tmp_path, data_dir, tiny_model_path, "reinforce", "steps=1", "batch_size=2", *extra)
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(AmbientError, match="goal"):
        _run(tmp_path / "g", data_dir, tiny_model_path, "reinforce", "steps=1", "goal=best")
    # a finished run: --resume leaves it as it is (it used to train again over its model),
    # --resume with another config is refused naming the key
    fin = tmp_path / "fin"
    _, done = _run(fin, data_dir, tiny_model_path, "reinforce", "steps=1", "batch_size=2")
    before = {p.name: p.stat().st_mtime_ns for p in done.iterdir()}
    _run(fin, data_dir, tiny_model_path, "reinforce", "steps=1", "batch_size=2", "resume=true")
    assert {p.name: p.stat().st_mtime_ns for p in done.iterdir()} == before
    with pytest.raises(AmbientError, match=r"another config \(differs in: steps\)"):
        _run(fin, data_dir, tiny_model_path, "reinforce", "steps=2", "batch_size=2", "resume=true")


def test_tier_conditioned_policy_with_base_reward_model(tmp_path, data_dir, tiny_model_path):
    """goal=good with a policy that has goal tokens, a reward model (and value model) without."""
    from ambient_rlhf.models.heads import ScalarHeadModel
    from ambient_rlhf.models.load import load_causal_lm, load_tokenizer
    from ambient_rlhf.models.tokenize import add_goal_tokens

    rm_dir, pol_dir = tmp_path / "rm", tmp_path / "pol"
    ScalarHeadModel(load_causal_lm(tiny_model_path)).save_pretrained(rm_dir, load_tokenizer(tiny_model_path))
    lm, tok = load_causal_lm(tiny_model_path), load_tokenizer(tiny_model_path)
    add_goal_tokens(tok, lm)
    lm.save_pretrained(pol_dir)
    tok.save_pretrained(pol_dir)
    rows, out = _run(tmp_path, data_dir, str(pol_dir), "ppo", "steps=1", "batch_size=2", f"reward={rm_dir}",
                     "goal=good", "sample_every=1")
    assert len(rows) == 1 and rows[0]["objective/kl"] == pytest.approx(0.0, abs=1e-5)
    assert "<|tier:good|>" in json.loads((out / "manifest.json").read_text())["example_prompt"]
