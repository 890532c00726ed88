"""ambient rl on tiny models: learning, KL control, invariances, outputs, config."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch

from ambient_rlhf.config import check_documented, load_config
from ambient_rlhf.logging import read_jsonl
from ambient_rlhf.train.rl import RLConfig, train_rl

NEWLINE = 198  # the token the peaked tiny model emits most often ("\n")
# PPO settings under which the first value loss can be derived by hand: no KL in the reward
# (beta 0), rewards not whitened, gamma = lambda = 1 (the return at every token is the
# score), one epoch of one minibatch (the value model's prediction equals its rollout value)
EXACT_PPO = ("kl.kind=fixed", "kl.init_beta=0", "lam=1.0", "whiten_rewards=false", "ppo_epochs=1",
             "num_minibatches=1")
PROMPT_LENGTH = "reward=python:helpers:prompt_length_reward"


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


def _constant_rm(path, tiny_model_path, kind, bias, norm=(0.0, 1.0)):
    """A reward-model directory whose head ignores the text (weight 0): its outputs are ``bias``."""
    from ambient_rlhf.models.heads import ScalarHeadModel
    from ambient_rlhf.models.load import load_causal_lm, load_tokenizer

    rm = ScalarHeadModel(load_causal_lm(tiny_model_path), kind=kind)
    with torch.no_grad():
        rm.head.weight.zero_()
        rm.head.bias.copy_(torch.tensor(bias))
    rm.set_normalization(*norm)
    rm.save_pretrained(path, load_tokenizer(tiny_model_path))
    return path


def _run(tmp_path, data_dir, model, algo, *overrides):
    cfg = load_config(RLConfig, None, [
        f"policy={model}", f"reward=token-count:{NEWLINE}", f"data={data_dir}", f"algo={algo}",
        f"out={tmp_path / algo}", "max_response_tokens=16", "missing_eos_score=null", "save_steps=0", "learning_rate=3e-4",
        *overrides])
    out = train_rl(cfg)
    return read_jsonl(out / "metrics.jsonl"), out


# PPO with lam=1: the value model starts at V = 0 (no reward model to start from), and with
# lam=0.95 the whitened GAE advantages of a fresh critic favour late tokens over early
# ones whatever the sample did (0.95^(T-t) R), which on 4 steps swamps the signal.
@pytest.mark.parametrize("algo,batch,extra", [("ppo", 8, "lam=1.0"), ("rloo", 4, "lam=0.95"),
                                              ("reinforce", 8, "lam=0.95")])
def test_each_algorithm_raises_the_reward(tmp_path, data_dir, peaked_model, algo, batch, extra):
    rows, _ = _run(tmp_path, data_dir, peaked_model, algo, "max_steps=4", f"batch_size={batch}", extra)
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
    common = ("max_steps=6", "batch_size=8", "learning_rate=1e-4", "kl.kind=fixed", "whiten_advantages=false")
    low, _ = _run(tmp_path / "lo", data_dir, peaked_model, "reinforce", *common, "kl.init_beta=0.01")
    high, _ = _run(tmp_path / "hi", data_dir, peaked_model, "reinforce", *common, "kl.init_beta=10.0")
    kl_low = sum(r["objective/kl"] for r in low[-3:]) / 3
    kl_high = sum(r["objective/kl"] for r in high[-3:]) / 3
    assert kl_low > 0.8 and kl_high < 0.4 * kl_low, (kl_low, kl_high)
    assert all(r["kl/beta"] == 10.0 for r in high)


def test_lora_adapter_is_saved_and_peft_loads_it_on_the_base_as_given(tmp_path, data_dir, tiny_model_path,
                                                                     monkeypatch):
    """RL with LoRA writes ``adapter/`` beside the merged policy; its
    ``base_model_name_or_path`` is the policy as the user typed it (a relative directory
    here), and peft's ``AutoPeftModelForCausalLM`` (base + adapter, unmerged) computes the
    same logits as the merged model."""
    import shutil

    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    shutil.copytree(tiny_model_path, tmp_path / "sft")
    monkeypatch.chdir(tmp_path)
    _, out = _run(tmp_path, data_dir, "sft", "rloo", "max_steps=1", "batch_size=2", "rloo_k=2", "lora.enabled=true",
                  "lora.r=4", "learning_rate=5e-2", "reward=token-count:0-4095")
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "sft"
    assert "AutoPeftModelForCausalLM.from_pretrained(" in (out / "README.md").read_text()  # the model card says so
    peft_model = AutoPeftModelForCausalLM.from_pretrained(out / "adapter")
    merged = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained("sft")
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    with torch.no_grad():
        got, want, before = peft_model(ids).logits, merged(ids).logits, base(ids).logits
    assert (want - before).abs().max() > 1e-3  # one step at lr 5e-2 moved the policy
    assert torch.allclose(got, want, atol=1e-5)


def test_adapter_base_name():
    from ambient_rlhf.models.load import resolve_model
    from ambient_rlhf.train.common import adapter_base_name

    assert adapter_base_name("runs/sft") == "runs/sft"
    assert adapter_base_name("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert adapter_base_name("tiny-random") == resolve_model("tiny-random")  # a name transformers cannot load


def test_lora_reference_is_the_adapter_disabled_and_output_loads(tmp_path, data_dir, tiny_model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows, out = _run(tmp_path, data_dir, tiny_model_path, "ppo", "max_steps=2", "batch_size=4", "lora.enabled=true",
                     "lora.r=4", "learning_rate=1e-2", "value_model=shared", "sample_every=1",
                     "reward=token-count:0-4095")  # ~8% of a random model's tokens: a non-zero signal
    # LoRA starts with B = 0: policy == reference at step 1, so the KL is exactly 0
    assert rows[0]["objective/kl"] == 0.0
    assert rows[1]["objective/kl"] != 0.0
    model = AutoModelForCausalLM.from_pretrained(out)  # merged, plain directory
    assert not any("lora" in n for n, _ in model.named_parameters())
    AutoTokenizer.from_pretrained(out)
    assert "AutoModelForCausalLM.from_pretrained" in (out / "README.md").read_text()  # the model card
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

    # raw output 3 whatever the text, normalisation (mean 1, std 2): every score is (3 - 1) / 2 = 1
    const = _constant_rm(tmp_path / "const", tiny_model_path, "scalar", [3.0], norm=(1.0, 2.0))
    rows, out = _run(tmp_path, data_dir, tiny_model_path, "ppo", "max_steps=1", "batch_size=2", f"reward={const}",
                     "sample_every=1", *EXACT_PPO)
    assert rows[0]["objective/score"] == pytest.approx(1.0, abs=1e-6) and (out / "config.json").is_file()
    # the value model starts from the reward model on the score's scale: head (0, 3) folded
    # with the normalisation is (0 / 2, (3 - 1) / 2) = (0, 1), so V = 1 = the return at every
    # token and the first value loss is 0 (the unfolded head would give 0.5 * (3 - 1)^2 = 2)
    assert rows[0]["ppo/value_loss"] == pytest.approx(0.0, abs=1e-6)
    rm_dir = tmp_path / "rm"
    torch.manual_seed(0)
    ScalarHeadModel(load_causal_lm(tiny_model_path)).save_pretrained(rm_dir, load_tokenizer(tiny_model_path))
    # the scorer reads the RM at the last real token of [prompt + response], whatever the padding
    from ambient_rlhf.train.rl import make_scorer

    tok = load_tokenizer(tiny_model_path)
    prompts = ["Why is the sky blue?", "Name a colour."]
    cfg = RLConfig(reward=str(rm_dir))
    scorer, rm = make_scorer(cfg, tok, prompts, torch.device("cpu"))
    resp = torch.tensor([[11, 12, 13, 2], [21, 2, 0, 0]])  # right-padded responses, EOS = 2
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    got = scorer([0, 1], resp, mask)
    from ambient_rlhf.models.tokenize import encode_prompt

    for i, r in enumerate(([11, 12, 13, 2], [21, 2])):
        # a reward model saved without budgets reads prompts under the default 128 tokens
        ids = encode_prompt(tok, prompts[i], 128)[0] + r
        with torch.no_grad():
            expect = rm.reward(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
        assert got[i].item() == pytest.approx(expect.item(), abs=1e-5)


def _word_level_reward_model(path):
    """A reward model over its own vocabulary: a word-level tokenizer trained here (ids
    unrelated to SmolLM2's) under a randomly initialised 1-layer Llama with a scalar head."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from ambient_rlhf.models.heads import ScalarHeadModel

    words = "Prompt: Response: why is the sky blue name a colour red green because light scatters".split()
    tk = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.train_from_iterator([" ".join(words)], trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[EOS]"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]")
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=2))
    rm = ScalarHeadModel(lm)
    with torch.no_grad():
        rm.head.weight.normal_()
    rm.set_normalization(0.5, 2.0)
    rm.save_pretrained(path, tok)
    return tok


def test_reward_model_with_another_tokenizer_scores_the_decoded_text(tmp_path, tiny_model_path):
    """A reward model over another vocabulary (Gemma for a SmolLM2 policy): the policy's
    samples are decoded and the reward model reads the text in its own tokens; a sample
    without EOS is scored as unfinished (no EOS appended)."""
    from transformers import AutoModelForSequenceClassification

    from ambient_rlhf.models.load import load_tokenizer
    from ambient_rlhf.train.rl import make_scorer, policy_only_ids

    rm_tok = _word_level_reward_model(tmp_path / "rm")
    pol = load_tokenizer(tiny_model_path)
    assert policy_only_ids(rm_tok, pol) is None  # not readable token by token
    prompts = ["why is the sky blue", "name a colour"]
    scorer, _ = make_scorer(RLConfig(reward=str(tmp_path / "rm")), pol, prompts, torch.device("cpu"))
    answers = [("because light scatters", True), ("red green", False)]
    rows = [pol(" " + a, add_special_tokens=False)["input_ids"] + ([pol.eos_token_id] if ended else [])
            for a, ended in answers]
    n = max(map(len, rows))
    resp = torch.tensor([r + [0] * (n - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows])
    got = scorer([0, 1], resp, mask)
    # by hand: the plain template in the reward model's words, its EOS only after a finished
    # answer; transformers' score at the last token plus the saved offset is the normalised reward
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    offset = json.loads((tmp_path / "rm" / "reward_config.json").read_text())["offset"]
    for i, ((a, ended), q) in enumerate(zip(answers, prompts)):
        ids = rm_tok(f"Prompt: {q}\nResponse: ", add_special_tokens=False)["input_ids"] + \
            rm_tok(a, add_special_tokens=False)["input_ids"] + ([rm_tok.eos_token_id] if ended else [])
        assert rm_tok.unk_token_id not in ids  # every word known: the text arrived intact
        with torch.no_grad():
            want = hf(input_ids=torch.tensor([ids])).logits[0, 0].item() + offset
        assert got[i].item() == pytest.approx(want, abs=1e-5)


def test_ppo_with_a_reward_model_over_another_vocabulary(tmp_path, data_dir, tiny_model_path, caplog):
    """PPO with such a reward model runs; its value model starts from the policy (the reward
    model's body cannot read the policy's tokens) with a zero head."""
    _word_level_reward_model(tmp_path / "rm")
    rows, _ = _run(tmp_path, data_dir, tiny_model_path, "ppo", "max_steps=1", "batch_size=2",
                   f"reward={tmp_path / 'rm'}", *EXACT_PPO)
    assert "re-tokenised" in caplog.text and "initialising the value model from the policy" in caplog.text
    assert math.isfinite(rows[0]["objective/score"]) and rows[0]["ppo/value_loss"] > 0


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
            _run(tmp_path / "e", data_dir, tiny_model_path, "reinforce", "max_steps=1", f"reward={spec}", "overwrite=true")


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
            _run(tmp_path, data_dir, tiny_model_path, "reinforce", "max_steps=1", "batch_size=2", *extra)
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(AmbientError, match="goal"):
        _run(tmp_path / "g", data_dir, tiny_model_path, "reinforce", "max_steps=1", "goal=best")
    # a finished run: --resume leaves it as it is (it used to train again over its model),
    # --resume with another config is refused naming the key
    fin = tmp_path / "fin"
    _, done = _run(fin, data_dir, tiny_model_path, "reinforce", "max_steps=1", "batch_size=2")
    before = {p.name: p.stat().st_mtime_ns for p in done.iterdir()}
    _run(fin, data_dir, tiny_model_path, "reinforce", "max_steps=1", "batch_size=2", "resume=true")
    assert {p.name: p.stat().st_mtime_ns for p in done.iterdir()} == before
    with pytest.raises(AmbientError, match=r"another config \(differs in: max_steps\)"):
        _run(fin, data_dir, tiny_model_path, "reinforce", "max_steps=2", "batch_size=2", "resume=true")


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
    rows, out = _run(tmp_path, data_dir, str(pol_dir), "ppo", "max_steps=1", "batch_size=2", f"reward={rm_dir}",
                     "goal=good", "sample_every=1")
    assert len(rows) == 1 and rows[0]["objective/kl"] == pytest.approx(0.0, abs=1e-5)
    assert "<|tier:good|>" in json.loads((out / "manifest.json").read_text())["example_prompt"]


def test_ppo_with_a_tiers_reward_model(tmp_path, data_dir, tiny_model_path):
    """A tiers reward model gives its expected tier value as the score; PPO's value model
    (from that reward model) has one output."""
    # head logits (ln 3, 0, 0) for (good, ok, bad) whatever the text: softmax (3/5, 1/5, 1/5),
    # tier values (1, 0, -1) -> every score is 3/5 - 1/5 = 0.4
    rm = _constant_rm(tmp_path / "rm", tiny_model_path, "tiers", [math.log(3.0), 0.0, 0.0])
    rows, _ = _run(tmp_path, data_dir, tiny_model_path, "ppo", "max_steps=1", "batch_size=2", f"reward={rm}",
                   "value_model=reward", *EXACT_PPO)
    assert rows[0]["objective/score"] == pytest.approx(0.4, abs=1e-6)
    # an expectation over tiers has no exact one-output linear form: the value head starts at
    # V = 0, the return is 0.4 at every token, so the first value loss is 0.5 * 0.4^2 = 0.08
    assert rows[0]["ppo/value_loss"] == pytest.approx(0.08, abs=1e-6)


def test_running_baseline_is_not_undone_by_whitening(tmp_path, data_dir, tiny_model_path):
    """reinforce_baseline=running with whitened advantages: the advantages keep the running
    baseline as their centre (whitening only scales them)."""
    rows, out = _run(tmp_path, data_dir, tiny_model_path, "reinforce", "max_steps=2", "batch_size=4", PROMPT_LENGTH,
                     "reinforce_baseline=running", "kl.kind=fixed", "kl.init_beta=0", "sample_every=1",
                     "samples_per_log=4")
    samples = read_jsonl(out / "samples.jsonl")
    s1 = [x["score"] for x in samples if x["step"] == 1]
    s2 = [x["score"] for x in samples if x["step"] == 2]
    # step 1: the first batch sets the baseline to its own mean -> advantages of mean 0 -> on
    # fresh samples (ratio 1) the loss -mean(A) is 0.  Step 2: A = (r - mean(s1)) / std(s2),
    # so the loss is -(mean(s2) - mean(s1)) / std(s2) (population std).  Subtracting the batch
    # mean again (today's whitening) would give 0 whatever the baseline.
    m1, m2, sd2 = statistics.fmean(s1), statistics.fmean(s2), statistics.pstdev(s2)
    assert abs(m2 - m1) > 0.1 * sd2, (s1, s2)  # the batches differ, so the check can fail
    assert rows[0]["ppo/policy_loss"] == pytest.approx(0.0, abs=1e-5)
    assert rows[1]["ppo/policy_loss"] == pytest.approx(-(m2 - m1) / sd2, rel=1e-4)


def test_k3_is_refused_in_the_reward(tmp_path, data_dir, tiny_model_path):
    from ambient_rlhf import AmbientError

    with pytest.raises(AmbientError, match=r"kl.estimator=k3 .*kl.in_loss=true"):
        _run(tmp_path, data_dir, tiny_model_path, "reinforce", "max_steps=1", "kl.estimator=k3")
    with pytest.raises(AmbientError, match=r"kl.in_loss=true with kl.estimator=k1.*expected gradient 0"):
        _run(tmp_path, data_dir, tiny_model_path, "reinforce", "max_steps=1", "kl.in_loss=true")
    assert not (tmp_path / "reinforce").exists()


@pytest.mark.parametrize("algo,extra", [("reinforce", ()), ("ppo", ("ppo_epochs=1",))])
def test_k3_in_the_loss(tmp_path, data_dir, tiny_model_path, algo, extra):
    """kl.in_loss=true: beta * k3 is a loss term; the reward carries no KL."""
    rows, _ = _run(tmp_path, data_dir, tiny_model_path, algo, "max_steps=2", "batch_size=4", PROMPT_LENGTH,
                   "kl.in_loss=true", "kl.estimator=k3", "kl.kind=fixed", "kl.init_beta=0.5", "learning_rate=1e-2", *extra)
    # step 1: policy == reference, k3 = 0 on every token
    assert rows[0]["ppo/kl_loss"] == pytest.approx(0.0, abs=1e-6)
    # step 2: the policy has moved (lr 1e-2); k3 >= 0 and now positive, and objective/kl is still k1
    assert rows[1]["ppo/kl_loss"] > 1e-4 and rows[1]["objective/kl"] != 0.0
    # the reward holds no KL term: rlhf_reward = score - beta * KL is logged as before
    r = rows[1]
    assert r["objective/rlhf_reward"] == pytest.approx(r["objective/score"] - 0.5 * r["objective/kl"], rel=1e-5)


@pytest.mark.parametrize("lora", ["false", "true"])  # the reference: its own model, or the adapter off
def test_reward_normalize_reference(tmp_path, data_dir, tiny_model_path, monkeypatch, lora):
    """reward_normalize=reference: gain and bias fitted on reference-policy samples of the
    training prompts (mean 0, std 1), kept in the checkpoint and the manifest."""
    args = ("max_steps=2", "batch_size=4", PROMPT_LENGTH, "reward_normalize=reference", "reward_normalize_samples=4",
            "sample_every=1", "samples_per_log=4", "save_steps=1", f"lora.enabled={lora}")
    rows, out = _run(tmp_path, data_dir, tiny_model_path, "reinforce", *args)
    samples = read_jsonl(out / "samples.jsonl")
    step1 = [x for x in samples if x["step"] == 1]
    # the reference samples are for the first 4 prompts of the training stream -- the prompts
    # of step 1 -- and the reward is the prompt's length, so gain = 1 / pstdev(lengths) and
    # bias = -mean(lengths) / pstdev(lengths), and step 1's scores have mean 0 and std 1
    lengths = [len(x["prompt"]) for x in step1]
    sd = statistics.pstdev(lengths)
    norm = json.loads((out / "manifest.json").read_text())["reward_normalization"]
    assert norm["gain"] == pytest.approx(1 / sd, rel=1e-6)
    assert norm["bias"] == pytest.approx(-statistics.fmean(lengths) / sd, rel=1e-6)
    scores = [x["score"] for x in step1]
    assert statistics.fmean(scores) == pytest.approx(0.0, abs=1e-5)
    assert statistics.pstdev(scores) == pytest.approx(1.0, rel=1e-5)
    assert rows[0]["objective/score"] == pytest.approx(0.0, abs=1e-5)
    from ambient_rlhf.checkpoint import load_state

    state = load_state(out / "checkpoints" / "step-1")
    assert state["reward_normalization"] == norm
    # a resumed run takes them from the checkpoint instead of sampling again
    import ambient_rlhf.train.rl.loop as rl

    def no_sampling(*a, **k):
        raise AssertionError("reference normalisation recomputed on resume")

    monkeypatch.setattr(rl, "_reference_normalization", no_sampling)
    _run(tmp_path, data_dir, tiny_model_path, "reinforce", *args, "resume=true")
    assert json.loads((out / "manifest.json").read_text())["reward_normalization"] == norm
