"""Reward-model training (`ambient rm`) on the synthetic data directory, tiny-random model."""

import json
import shutil

import pytest
import torch
from helpers import make_data_dir
from safetensors.torch import load_file

from ambient_rlhf import AmbientError
from ambient_rlhf.config import check_documented, load_config
from ambient_rlhf.logging import read_jsonl
from ambient_rlhf.models.heads import ScalarHeadModel
from ambient_rlhf.models.reward_model import load_reward_model
from ambient_rlhf.models.load import load_causal_lm, load_tokenizer
from ambient_rlhf.models.tokenize import encode_pair, pad_batch
from ambient_rlhf.train import reward as R

FAST = ["eval_split=", "eval_steps=0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data_dir(tmp_path_factory.mktemp("rmdata") / "data", n_threads=36, k=4)


def cfg(data, out, *overrides):
    return load_config(R.RewardConfig, None, [f"data={data}", "model=tiny-random", f"out={out}", *FAST, *overrides])


@pytest.fixture(scope="module")
def planted(data, tmp_path_factory):
    """Full fine-tuning of tiny-random on pairs where the MARKER response wins."""
    out = tmp_path_factory.mktemp("rm") / "planted"
    R.train_reward(cfg(data, out, "objective=pairwise", "learning_rate=3e-3", "num_train_epochs=3", "eval_split=test"))
    return out


def test_config_documented():
    assert check_documented(R.RewardConfig) == []


def test_text_table_matches_encode_pair(tiny_model_path):
    tok = load_tokenizer(tiny_model_path)
    t = R.TextTable.of(tok, 40, 5, "auto")
    cases = [("a short question?", "yes"), ("a much longer question " * 5, "one two three four five six seven"),
             ("a short question?", "one two three")]
    for p, r in cases:
        e = encode_pair(tok, p, r, 40, 5, "auto")
        assert t.ids[t.add(p, r)] == e.input_ids
        assert t.prompt_len[t.add(p, r)] == e.prompt_len
    assert len(t) == 3 and t.response_truncated == 1 and t.prompt_truncated == 1


def test_reward_is_read_at_last_real_token_whatever_the_padding(tiny_model_path):
    torch.manual_seed(0)
    tok = load_tokenizer(tiny_model_path)
    rm = ScalarHeadModel(load_causal_lm(tiny_model_path)).eval()
    seqs = [tok("hello there friend")["input_ids"], tok("hi")["input_ids"], tok("a b c d e f g")["input_ids"]]
    with torch.no_grad():
        alone = torch.stack([rm.reward(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))[0] for s in seqs])
        right = rm.reward(*pad_batch(seqs, tok.pad_token_id, "right"))
        left = rm.reward(*pad_batch(seqs, tok.pad_token_id, "left"))
    assert torch.allclose(right, alone, atol=1e-5) and torch.allclose(left, alone, atol=1e-5)
    assert alone.std() > 1e-4  # distinct texts, distinct rewards: the check is not vacuous


def test_planted_preference_is_learned(planted):
    ev = json.loads((planted / "eval.json").read_text())
    assert ev["accuracy"]["value"] >= 0.9, ev["accuracy"]
    rows = read_jsonl(planted / "metrics.jsonl")
    assert rows[-1]["step"] == 72  # 96 train pairs / batch 4 = 24 steps x 3 epochs
    for f in ("manifest.json", "reward_config.json", "model.safetensors", "config.json", "eval.json", "README.md"):
        assert (planted / f).is_file(), f
    # the backbone loads as a plain causal LM
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(planted)


def test_normalization_gives_mean0_std1_on_reference(planted, data):
    from ambient_rlhf.eval.reward_eval import score_rows

    rm = load_reward_model(planted)
    cfg_ = cfg(data, planted)
    table = R.TextTable.of(rm.tokenizer, cfg_.max_prompt_tokens, cfg_.max_response_tokens, "auto")
    rows = [u.rows[0] for u in R.index_units(R.reference_units(cfg_), table)]
    assert len(rows) == 24  # 6 valid threads x 4 responses
    r = torch.tensor(list(score_rows(rm, table, rows)["reward"].values()))
    assert abs(r.mean().item()) < 1e-4 and abs(r.std(unbiased=False).item() - 1.0) < 1e-4
    meta = json.loads((planted / "reward_config.json").read_text())
    assert meta["norm_std"] != 1.0 and meta["norm_reference"]["n"] == 24


def test_resume_equals_uninterrupted(data, tmp_path):
    full = tmp_path / "full"
    R.train_reward(cfg(data, full, "max_steps=6", "save_steps=3", "learning_rate=3e-3", "eval_steps=2"))
    part = tmp_path / "part"
    shutil.copytree(full, part)
    # simulate a kill after step 3: drop the step-6 checkpoint and the final model
    shutil.rmtree(part / "checkpoints" / "step-6")
    for f in ("reward_config.json", "model.safetensors", "manifest.json"):  # (written last)
        (part / f).unlink()
    R.train_reward(cfg(data, part, "max_steps=6", "save_steps=3", "learning_rate=3e-3", "eval_steps=2", "resume=true"))
    a, b = read_jsonl(full / "metrics.jsonl"), read_jsonl(part / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for x, y in zip(a, b):
        assert x["rm/loss"] == y["rm/loss"] and x.get("rm/valid_accuracy") == y.get("rm/valid_accuracy")
    ha = load_file(full / "model.safetensors")
    hb = load_file(part / "model.safetensors")
    assert torch.equal(ha["score.weight"], hb["score.weight"])


def test_cached_top_layers_equal_the_full_model(data, tiny_model_path):
    tok = load_tokenizer(tiny_model_path)
    rm = ScalarHeadModel(load_causal_lm(tiny_model_path)).eval()
    table = R.TextTable.of(tok, 48, 16, "auto")
    rows = [table.add("what is it?", "a stone"), table.add("what is it, really, in the end?", "a bridge over water")]
    for mode, n in (("top", 1), ("top", 2), ("head", 0)):
        s = R.Scorer(rm, table, mode, n, torch.device("cpu"), tok.pad_token_id)
        s.prepare(rows, 2)
        assert s.check(rows) < 1e-5, mode


def test_head_only_with_feature_cache_and_halves(data, tmp_path):
    fc = tmp_path / "fc"
    a = R.train_reward(cfg(data, tmp_path / "a", "train_layers=0", f"feature_cache={fc}", "train_half=a"))
    files = list(fc.glob("*.features.safetensors"))
    assert len(files) == 1
    n = len(load_file(files[0]))
    R.train_reward(cfg(data, tmp_path / "b", "train_layers=0", f"feature_cache={fc}", "train_half=b"))
    assert len(load_file(files[0])) > n  # b's threads added
    ca = json.loads((a / "manifest.json").read_text())["counts"]
    cb = json.loads((tmp_path / "b" / "manifest.json").read_text())["counts"]
    assert ca["train_units"] + cb["train_units"] == 96  # the halves partition the 96 train pairs
    assert ca["mode"] == "head"
    threads = [f"t{i:04d}" for i in range(200)]
    assert {R.half_of(t) for t in threads} == {"a", "b"}
    assert 70 < sum(R.half_of(t) == "a" for t in threads) < 130


@pytest.mark.parametrize("obj", ["tiers", "reply-sentiment"])
def test_objectives_tiers_and_reply_sentiment_learn_the_planted_signal(data, tmp_path, obj):
    # In this data every MARKER answer outscores every other one of its thread: the MARKER
    # answers take tiers good and ok (ranks 0, 1), the others ok and bad (ranks 2, 3), and
    # the replies to even-ranked answers are +0.5 under a MARKER answer, -0.5 otherwise.
    # Either objective, learned, must put the MARKER answer first in most test pairs.
    out = R.train_reward(cfg(data, tmp_path / obj, f"objective={obj}", "learning_rate=3e-3", "num_train_epochs=3", "eval_split=test"))
    rm = load_reward_model(out)
    assert rm.kind == ("tiers" if obj == "tiers" else "scalar")
    ids, mask = pad_batch([[1, 2, 3], [4, 5]], rm.tokenizer.pad_token_id)
    assert rm.reward(ids, mask).shape == (2,)
    ev = json.loads((out / "eval.json").read_text())
    assert ev["n_pairs"] == 24 and ev["accuracy"]["value"] >= 0.8, ev["accuracy"]


def test_bad_config_errors(data, tmp_path):
    with pytest.raises(AmbientError, match="lora"):
        R.train_reward(cfg(data, tmp_path / "x", "lora.enabled=true", "train_layers=0"))
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "f").write_text("x")
    with pytest.raises(AmbientError, match="exists"):
        R.train_reward(cfg(data, tmp_path / "exists"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(AmbientError, match="pairs.parquet"):
        R.train_reward(cfg(tmp_path / "empty", tmp_path / "y"))
    with pytest.raises(AmbientError, match="lies inside the input"):  # the output would destroy the input
        R.train_reward(cfg(data, data / "rm"))


def test_shared_prompt_pass_equals_full_sequences(tiny_model_path):
    torch.manual_seed(0)
    tok = load_tokenizer(tiny_model_path)
    rm = ScalarHeadModel(load_causal_lm(tiny_model_path)).eval()
    t = R.TextTable.of(tok, 48, 16, "auto")
    rows = [t.add("what is it?", "a stone"), t.add("a longer question, what is it really?", "no"),
            t.add("what is it?", "a bridge over the water and more"),
            t.add("a longer question, what is it really?", "yes it is"), t.add("x?", "alone")]

    def run(fn):
        rm.zero_grad()
        out = fn()
        (out * torch.arange(1.0, 6.0).unsqueeze(1)).sum().backward()
        return out.detach(), [p.grad.clone() for p in rm.parameters() if p.grad is not None]

    a, ga = run(lambda: rm(*pad_batch([t.ids[r] for r in rows], 0, "right")))
    b, gb = run(lambda: R.shared_prompt_outputs(rm, t, rows, "cpu"))
    assert torch.allclose(a, b, atol=1e-5) and a.std() > 1e-3
    assert len(ga) == len(gb) and all(torch.allclose(x, y, atol=1e-4) for x, y in zip(ga, gb))


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_cached_features_with_shared_prompts_equal_the_plain_ones(tiny_model_path, pooling):
    """Head-only features (last token, or mean of the response states) computed with each
    thread's prompt run once per batch equal those of the full sequences; the embedding
    layer saw the 3 distinct prompts once, then the 6 responses alone."""
    torch.manual_seed(0)
    tok = load_tokenizer(tiny_model_path)
    rm = ScalarHeadModel(load_causal_lm(tiny_model_path), meta={"pooling": pooling}).eval()
    t = R.TextTable.of(tok, 48, 16, "auto")
    rows = [t.add(q, a) for q, a in [("what is it?", "a stone"), ("a longer question, what is it really?", "no"),
                                     ("what is it?", "a bridge over the water and more"), ("x?", "alone"),
                                     ("a longer question, what is it really?", "yes it is"), ("x?", "not alone")]]
    seen = []
    hook = rm.lm.get_input_embeddings().register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    feats = {}
    for share in (False, True):
        seen.clear()
        sc = R.Scorer(rm, t, "head", 0, "cpu", tok.pad_token_id)
        sc.share_prompts = share
        assert sc.prepare(rows, 8, save=False) == len(rows)
        feats[share] = (torch.stack([sc.cache[r] for r in rows]), list(seen))
    hook.remove()
    (plain, seen_plain), (shared, seen_shared) = feats[False], feats[True]
    assert len(seen_plain) == 1 and seen_plain[0][0] == 6
    assert len(seen_shared) == 2 and seen_shared[0][0] == 3 and seen_shared[1][0] == 6
    assert seen_shared[1][1] < seen_plain[0][1]  # the responses ran without their prompts
    assert torch.allclose(plain, shared, atol=1e-5) and plain.std() > 1e-3


def test_balance_by_length_by_hand():
    from ambient_rlhf.train.reward import Unit, balance_by_length

    def pair(tid, n_chosen, n_rejected):
        return Unit(tid, [("q", "w " * n_chosen), ("q", "w " * n_rejected)])

    # 5 pairs where the preferred answer is longer, 2 where it is shorter, 1 tie
    units = [pair("a", 5, 2), pair("a", 4, 1), pair("b", 9, 3), pair("b", 2, 6), pair("c", 3, 3),
             pair("c", 7, 1), pair("d", 1, 8), pair("d", 6, 2)]
    counts: dict = {}
    out = balance_by_length(units, seed=0, counts=counts)
    longer = sum(len(u.texts[0][1].split()) > len(u.texts[1][1].split()) for u in out)
    shorter = sum(len(u.texts[0][1].split()) < len(u.texts[1][1].split()) for u in out)
    assert (longer, shorter) == (2, 2) and counts["length_balance_dropped"] == 3
    assert any(u.texts[0][1] == u.texts[1][1] for u in out)  # the tie stays
    assert [units.index(u) for u in out] == sorted(units.index(u) for u in out)  # order kept
    assert balance_by_length(out, seed=0) == out  # already balanced: nothing dropped


def test_backbone_layers_is_a_standard_smaller_model_reading_layer_n(data, tmp_path, tiny_model_path):
    """``backbone_layers=1``: the saved reward model is a one-layer *ForSequenceClassification
    whose output is its head on layer 1's (normed) last-token state of the FULL backbone,
    computed here independently with ``output_hidden_states``."""
    from transformers import AutoModelForSequenceClassification

    full = load_causal_lm(tiny_model_path).eval()
    assert full.config.num_hidden_layers >= 2
    fc = tmp_path / "fc"
    out = R.train_reward(cfg(data, tmp_path / "cut", "train_layers=0", "backbone_layers=1", f"feature_cache={fc}"))
    hf = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert hf.config.num_hidden_layers == 1
    tok = load_tokenizer(tiny_model_path)
    ids = torch.tensor([tok("a question\nan answer that ends here")["input_ids"]])
    with torch.no_grad():
        h1 = full(input_ids=ids, output_hidden_states=True).hidden_states[1]  # output of layer 1 (pre-norm)
        feat = full.model.norm(h1)[0, -1]
        want = hf.score.weight[0] @ feat + (hf.score.bias[0] if hf.score.bias is not None else 0.0)
        got = hf(input_ids=ids).logits[0, 0]
    assert abs(float(got - want)) < 1e-4
    # the cut backbone's features live in their own cache file, apart from the full backbone's
    R.train_reward(cfg(data, tmp_path / "whole", "train_layers=0", f"feature_cache={fc}"))
    assert len(list(fc.glob("*.features.safetensors"))) == 2
    with pytest.raises(AmbientError, match="backbone_layers"):
        R.train_reward(cfg(data, tmp_path / "bad", "train_layers=2", "backbone_layers=1"))
