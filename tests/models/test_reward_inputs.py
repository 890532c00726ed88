"""One reward-model input path: the reward trainer, ``rm eval``, the RL reward, ``ambient
eval`` and combined reward models all score the same text alike, rendered from the
reward model's own saved config (template, community prefix, budgets)."""

import json

import pytest
import torch
from helpers import make_data_dir

from ambient_rlhf.config import load_config
from ambient_rlhf.models.reward_model import load_reward_model
from ambient_rlhf.models.load import load_tokenizer
from ambient_rlhf.models.reward_inputs import (RewardFunction, RewardInputs, RewardInputSpec, TextTable,
                                               reward_inputs_of)
from ambient_rlhf.models.tokenize import encode_pair, encode_prompt

# the askacademia preset's reward-model budgets, smaller than the policy's 128-token prompts
RM_BUDGETS = ["max_prompt_tokens=96", "max_response_tokens=96"]
LONG_Q = "Should I email the professor again after two weeks without an answer? " * 12  # > 96 tokens
LONG_A = "Yes, a polite follow-up is normal and expected in academia. " * 16  # > 96 tokens
TEXTS = [("Is a stone alive?", "No."), (LONG_Q, "Wait one more week."), ("How long is a thesis?", LONG_A),
         (LONG_Q, LONG_A)]


@pytest.fixture(scope="module")
def rms(tmp_path_factory):
    """A pairwise RM with the community prefix, a tiers RM without, and their combination."""
    from ambient_rlhf.train.reward import RewardConfig, combine, train_reward

    root = tmp_path_factory.mktemp("rmin")
    data = make_data_dir(root / "askfoo", n_threads=18, k=3)
    out = {"data": data}
    for name, extra in (("pair", ["objective=pairwise", "community_prefix=true", "train_layers=-1"]),
                        ("tiers", ["objective=tiers", "train_layers=1"])):
        cfg = load_config(RewardConfig, None, [f"data={data}", "model=tiny-random", f"out={root / name}",
                                               "max_steps=2", "learning_rate=1e-2", "eval_split=", "eval_steps=0",
                                               *RM_BUDGETS, *extra])
        train_reward(cfg)
        out[name], out[name + "_cfg"] = root / name, cfg
    out["comb"] = combine([str(out["pair"]), str(out["tiers"])], [1.0, 0.5], root / "comb")
    return out


def by_hand(rm_dir, prompt, response, community="askfoo"):
    """The reward of one text, rendered by hand from the saved config and scored alone."""
    meta = json.loads((rm_dir / "reward_config.json").read_text())
    rm = load_reward_model(rm_dir)
    q = f"[{community}] {prompt}" if meta["community_prefix"] else prompt
    e = encode_pair(rm.tokenizer, q, response, meta["max_prompt_tokens"], meta["max_response_tokens"])
    with torch.no_grad():
        return rm.reward(torch.tensor([e.input_ids]), torch.ones(1, len(e.input_ids), dtype=torch.long)).item()


def test_saved_config_records_the_rendering(rms):
    meta = json.loads((rms["pair"] / "reward_config.json").read_text())
    assert (meta["max_prompt_tokens"], meta["max_response_tokens"], meta["community_prefix"]) == (96, 96, True)
    assert (meta["prompt_truncation"], meta["response_truncation"], meta["template"]) == ("left", "right", "chat")
    assert RewardInputSpec.from_meta(meta) == RewardInputSpec("chat", 96, 96, True)


def test_every_path_gives_the_same_reward(rms):
    from ambient_rlhf.eval.policy_eval import score
    from ambient_rlhf.eval.reward_eval import score_rows
    from ambient_rlhf.train.reward import Scorer
    from ambient_rlhf.train.reward.config import input_spec
    from ambient_rlhf.train.rl import RLConfig, make_scorer

    prompts, responses = [p for p, _ in TEXTS], [r for _, r in TEXTS]
    tok = load_tokenizer(str(rms["pair"]))
    for name in ("pair", "tiers"):
        want = [by_hand(rms[name], p, r) for p, r in TEXTS]
        assert len(set(round(w, 6) for w in want)) == len(want)  # the texts are told apart
        rm = load_reward_model(rms[name])
        # the trainer's own table (from its config) through its full-model scorer
        table = TextTable(RewardInputs(tok, input_spec(rms[name + "_cfg"])))
        rows = [table.add(p, r, "askfoo") for p, r in TEXTS]
        assert table.prompt_truncated == 2 and table.response_truncated == 2
        with torch.no_grad():
            raw = rm.raw_reward(Scorer(rm, table, "full", -1, torch.device("cpu"), tok.pad_token_id).outputs(rows))
        trainer = ((raw - rm.norm_mean) / rm.norm_std).tolist()
        # rm eval: a table from the saved config
        t2 = TextTable(reward_inputs_of(rm))
        r2 = [t2.add(p, r, "askfoo") for p, r in TEXTS]
        ev = score_rows(rm, t2, r2, batch_size=3)["reward"]
        # ambient eval (and the truth stage)
        pe = score(rm, prompts, responses, "askfoo", batch_size=3)
        # the RL reward: the policy's tokens (EOS last), right-padded; the policy's own
        # prompt budget (128) must not matter
        scorer, _ = make_scorer(RLConfig(reward=str(rms[name]), data=str(rms["data"]), max_prompt_tokens=128),
                                tok, prompts, torch.device("cpu"))
        ids = [tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for r in responses]
        T = max(map(len, ids))
        resp = torch.tensor([x + [tok.pad_token_id] * (T - len(x)) for x in ids])
        mask = torch.tensor([[1] * len(x) + [0] * (T - len(x)) for x in ids])
        rl = scorer(list(range(len(TEXTS))), resp, mask).tolist()
        # compared on the head's own scale: batches pad differently, and float32 noise of
        # ~1e-7 in the head output is divided by the normalisation's std (here ~0.04)
        for path, got in (("trainer", trainer), ("rm eval", [ev[i] for i in r2]), ("eval", pe.tolist()), ("rl", rl)):
            diff = (torch.tensor(got) - torch.tensor(want)).abs().max().item() * rm.norm_std
            assert diff < 1e-6, (name, path, got, want)


@pytest.mark.parametrize("name", ["pair", "tiers"])
def test_responses_to_one_prompt_share_its_pass_and_score_as_alone(rms, name):
    """RewardFunction batches a prompt's responses together and runs the prompt once: the
    rewards equal each text scored alone (by hand), and the embedding layer sees each
    distinct prompt once, then the responses alone (else nothing was shared)."""
    qa = [(LONG_Q, "Wait one more week."), ("Is a stone alive?", "No."), (LONG_Q, LONG_A),
          ("Is a stone alive?", "Only in stories, and those are not evidence."), (LONG_Q, "No.")]
    want = [by_hand(rms[name], p, r) for p, r in qa]
    rm = load_reward_model(rms[name])
    seen = []
    hook = rm.lm.get_input_embeddings().register_forward_hook(lambda m, a, o: seen.append(tuple(a[0].shape)))
    try:
        got = RewardFunction(rm, batch_size=8).texts([p for p, _ in qa], [r for _, r in qa], ["askfoo"] * 5)
    finally:
        hook.remove()
    assert [s[0] for s in seen] == [2, 5]  # two distinct prompts, then the five responses
    plain = RewardFunction(rm, batch_size=8, share_prompts=False).texts([p for p, _ in qa], [r for _, r in qa],
                                                                        ["askfoo"] * 5)
    # rm eval's scoring of a text table, the same way
    from ambient_rlhf.eval.reward_eval import score_rows

    table = TextTable(reward_inputs_of(rm))
    rows = [table.add(p, r, "askfoo") for p, r in qa]
    seen.clear()
    hook = rm.lm.get_input_embeddings().register_forward_hook(lambda m, a, o: seen.append(tuple(a[0].shape)))
    try:
        ev = score_rows(rm, table, rows, batch_size=8)["reward"]
    finally:
        hook.remove()
    assert [s[0] for s in seen] == [2, 5]
    for g in (got, plain, torch.tensor([ev[r] for r in rows])):
        assert (g - torch.tensor(want)).abs().max().item() * rm.norm_std < 1e-6, (g, want)


def test_combined_model_sums_members_each_with_its_own_rendering(rms):
    from ambient_rlhf.eval.policy_eval import score
    from ambient_rlhf.eval.reward_eval import score_rows
    from ambient_rlhf.train.rl import RLConfig, make_scorer

    want = [by_hand(rms["pair"], p, r) + 0.5 * by_hand(rms["tiers"], p, r) for p, r in TEXTS]
    comb = load_reward_model(rms["comb"])
    prompts, responses = [p for p, _ in TEXTS], [r for _, r in TEXTS]
    pe = score(comb, prompts, responses, "askfoo", batch_size=2).tolist()
    t = TextTable(reward_inputs_of(comb.members[0]))
    rows = [t.add(p, r, "askfoo") for p, r in TEXTS]
    ev = score_rows(comb, t, rows)["reward"]
    tok = comb.tokenizer
    scorer, _ = make_scorer(RLConfig(reward=str(rms["comb"]), data=str(rms["data"])), tok, prompts, torch.device("cpu"))
    ids = [tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for r in responses]
    T = max(map(len, ids))
    resp = torch.tensor([x + [0] * (T - len(x)) for x in ids])
    mask = torch.tensor([[1] * len(x) + [0] * (T - len(x)) for x in ids])
    rl = scorer(list(range(len(TEXTS))), resp, mask).tolist()
    scale = min(m.norm_std for m in comb.members)  # float noise is relative to the heads' scale
    for got in (pe, [ev[i] for i in rows], rl):
        assert (torch.tensor(got) - torch.tensor(want)).abs().max().item() * scale < 1e-6, (got, want)


def test_response_that_never_ended_has_no_eos(tiny_model_path):
    tok = load_tokenizer(tiny_model_path)
    inp = RewardInputs(tok, RewardInputSpec(max_prompt_tokens=64, max_response_tokens=8))
    words = tok("one two three", add_special_tokens=False)["input_ids"]
    p_ids = encode_prompt(tok, "q?", 64)[0]
    # ended: the response and EOS; a sample cut at its generation limit: no EOS
    assert inp.encode("q?", "one two three").input_ids == p_ids + words + [tok.eos_token_id]
    assert inp.encode("q?", "one two three", ended=False).input_ids == p_ids + words
    # too long for the budget: the first 8 tokens, no EOS, counted as truncated
    long = tok("a b c d e f g h i j", add_special_tokens=False)["input_ids"]
    e = inp.encode("q?", "a b c d e f g h i j")
    assert e.input_ids == p_ids + long[:8] and e.response_truncated and not e.prompt_truncated
    # a response of exactly 7 tokens keeps its EOS (8 with it); of 8, loses it
    assert inp.encode_tokens("q?", long[:7] + [2]).input_ids[-1] == tok.eos_token_id
    assert inp.encode_tokens("q?", long[:8] + [2]).input_ids == p_ids + long[:8]


def test_goal_tokens_of_the_policy_are_dropped(rms):
    """A goal-token policy has ids its reward model lacks: they are removed before scoring."""
    rm = load_reward_model(rms["tiers"])
    tok = rm.tokenizer
    new_id = len(tok)  # an id the reward model has never seen
    ids = tok("Yes, quite.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    fn = RewardFunction(rm, batch_size=1, drop_ids=[new_id])
    a = fn.tokens(["Why?"], [ids], ["askfoo"])
    b = fn.tokens(["Why?"], [[new_id] + ids], ["askfoo"])
    assert a.tolist() == b.tolist()
    assert abs(a.item() - by_hand(rms["tiers"], "Why?", "Yes, quite.")) * rm.norm_std < 1e-6


def test_spec_rejects_unsupported_truncation_and_budgets():
    from ambient_rlhf import AmbientError

    with pytest.raises(AmbientError, match="truncation"):
        RewardInputSpec(prompt_truncation="right")
    with pytest.raises(AmbientError, match="budgets"):
        RewardInputSpec(max_response_tokens=0)
