"""``ambient rm pooling=mean``: the head reads the mean of the response tokens' states.

Expected values are computed here by hand from the body's hidden states (slice the
response positions, average, apply the head), never by the pooling code under test."""

import json

import pytest
import torch
from helpers import head_rm_config, make_data_dir

from ambient_rlhf import AmbientError
from ambient_rlhf.eval.reward_eval import evaluate_reward
from ambient_rlhf.models.heads import ScalarHeadModel, pool_states
from ambient_rlhf.models.load import load_causal_lm, load_tokenizer
from ambient_rlhf.models.reward_inputs import RewardFunction, RewardInputs
from ambient_rlhf.models.reward_model import load_reward_model
from ambient_rlhf.models.tokenize import pad_batch
from ambient_rlhf.train import reward as R


def test_pool_states_by_hand():
    # two sequences, d = 1: [p p r r] (prompt 2) and [p r r r] (prompt 1) right-padded to 5,
    # and the same left-padded; values are the position numbers 1..5 for readability
    h = torch.tensor([[1.0, 2.0, 3.0, 4.0, 9.0], [1.0, 2.0, 3.0, 4.0, 9.0]]).unsqueeze(-1)
    right = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]])
    plen = torch.tensor([2, 1])
    assert pool_states(h, right, plen, "mean")[:, 0].tolist() == [3.5, 3.0]  # (3+4)/2, (2+3+4)/3
    assert pool_states(h, right, None, "last")[:, 0].tolist() == [4.0, 4.0]
    hl = torch.tensor([[9.0, 1.0, 2.0, 3.0, 4.0], [9.0, 1.0, 2.0, 3.0, 4.0]]).unsqueeze(-1)
    left = torch.tensor([[0, 1, 1, 1, 1], [0, 1, 1, 1, 1]])
    assert pool_states(hl, left, plen, "mean")[:, 0].tolist() == [3.5, 3.0]
    # no response token (the prompt fills the sequence): zeros, not a division by zero
    assert pool_states(h, right, torch.tensor([4, 4]), "mean")[:, 0].tolist() == [0.0, 0.0]
    with pytest.raises(AmbientError, match="prompt length"):
        pool_states(h, right, None, "mean")


def test_mean_pooled_reward_equals_the_hand_average_whatever_the_padding(tiny_model_path):
    torch.manual_seed(0)
    tok = load_tokenizer(tiny_model_path)
    rm = ScalarHeadModel(load_causal_lm(tiny_model_path), meta={"pooling": "mean"}).eval()
    seqs = [tok("question one answer here")["input_ids"], tok("q two a")["input_ids"],
            tok("a longer question with words then the answer")["input_ids"]]
    plens = [2, 1, 5]
    with torch.no_grad():
        want = []
        for s, p in zip(seqs, plens):
            h = rm.hidden_states(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))[0]  # (T, d)
            want.append(rm.head(h[p:].mean(0))[0])
        want = torch.stack(want)
        got_r = rm(*pad_batch(seqs, tok.pad_token_id, "right"), torch.tensor(plens))[:, 0]
        got_l = rm(*pad_batch(seqs, tok.pad_token_id, "left"), torch.tensor(plens))[:, 0]
        last = ScalarHeadModel(rm.lm)
        last.head.load_state_dict(rm.head.state_dict())
        got_last = last(*pad_batch(seqs, tok.pad_token_id, "right"))[:, 0]
    assert torch.allclose(got_r, want, atol=1e-5) and torch.allclose(got_l, want, atol=1e-5)
    assert (got_last - want).abs().max() > 1e-3  # the last token reads something else: not vacuous
    with pytest.raises(AmbientError, match="prompt length"):
        rm(*pad_batch(seqs, tok.pad_token_id, "right"))
    with pytest.raises(AmbientError, match="pooling"):
        ScalarHeadModel(rm.lm, meta={"pooling": "max"})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data_dir(tmp_path_factory.mktemp("rmpool") / "data", n_threads=36, k=4)


def cfg(data, out, *more):
    return head_rm_config(data, out, *more, eval_steps=0)


def test_trained_mean_pooled_model_scores_as_the_hand_average_everywhere(data, tmp_path):
    """Train head-only with pooling=mean; the saved model says so, and RL's RewardFunction,
    rm eval with and without the feature cache, and a hand computation all agree."""
    fc = tmp_path / "fc"
    out = R.train_reward(cfg(data, tmp_path / "rm", "pooling=mean", f"feature_cache={fc}"))
    assert json.loads((out / "reward_config.json").read_text())["pooling"] == "mean"
    assert json.loads((out / "config.json").read_text())["ambient_reward"]["pooling"] == "mean"
    assert "mean of the response tokens" in (out / "README.md").read_text()
    rm = load_reward_model(out)
    assert rm.pooling == "mean"
    inputs = RewardInputs.from_pretrained(out)
    prompts = ["What is a good first paper to read?", "How do I ask for an extension?"]
    answers = ["Start with a survey of the field.", "Write early and explain briefly; most say yes."]
    got = RewardFunction(rm).texts(prompts, answers)
    with torch.no_grad():
        want = []
        for p, a in zip(prompts, answers):
            e = inputs.encode(p, a)
            h = rm.hidden_states(torch.tensor([e.input_ids]), torch.ones(1, len(e.input_ids), dtype=torch.long))[0]
            raw = rm.head(h[e.prompt_len:].mean(0))[0]
            want.append(float((raw - rm.norm_mean) / rm.norm_std))
    assert got.tolist() == pytest.approx(want, abs=1e-5)
    # the feature cache holds mean-pooled features in a file of its own, keyed with the prompt length
    files = list(fc.glob("*.features.safetensors"))
    assert len(files) == 1
    from safetensors.torch import load_file

    assert all(":" in k for k in load_file(files[0]))
    # rm eval from the cache equals rm eval from the model
    a = evaluate_reward(out, data, split="test", out=tmp_path / "ev_cache", loglik_model="none", plots=False,
                        feature_cache=str(fc), n_boot=50)
    b = evaluate_reward(out, data, split="test", out=tmp_path / "ev_model", loglik_model="none", plots=False,
                        n_boot=50)
    # (the same up to float rounding: the model path runs each thread's prompt once, in other batches)
    assert a["accuracy"] == b["accuracy"]
    assert a["length_correlation"] == pytest.approx(b["length_correlation"], rel=1e-5)
    # a last-token model from the same cache directory uses another file
    R.train_reward(cfg(data, tmp_path / "rm_last", f"feature_cache={fc}"))
    assert len(list(fc.glob("*.features.safetensors"))) == 2


@pytest.mark.parametrize("mode,n_top,share", [("top", 1, False), ("top", 2, False), ("full", -1, False),
                                              ("full", -1, True), ("top", 1, True), ("top", 2, True)])
def test_trained_layers_pool_the_mean_as_by_hand(tiny_model_path, mode, n_top, share):
    """Top layers on cached states and the whole network (plain or each prompt once) read
    the mean of the response states: outputs and gradients against a hand average."""
    torch.manual_seed(0)
    tok = load_tokenizer(tiny_model_path)
    rm = ScalarHeadModel(load_causal_lm(tiny_model_path), meta={"pooling": "mean"}).eval()
    t = R.TextTable.of(tok, 48, 16, "auto")
    rows = [t.add(q, a) for q, a in [("what is it?", "a stone"), ("a longer question, what is it really?", "no"),
                                     ("what is it?", "a bridge over the water and more"), ("x?", "alone")]]

    def hand():
        out = []
        for r in rows:
            ids = torch.tensor([t.ids[r]])
            h = rm.hidden_states(ids, torch.ones_like(ids))[0]  # (T, d)
            out.append(rm.head(h[t.prompt_len[r]:].mean(0)))
        return torch.stack(out)

    def grads(fn):
        rm.zero_grad()
        out = fn()
        (out * torch.arange(1.0, 5.0).unsqueeze(1)).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in rm.named_parameters() if p.grad is not None}

    sc = R.Scorer(rm, t, mode, n_top, torch.device("cpu"), tok.pad_token_id)
    sc.share_prompts = share
    sc.prepare(rows, 4)
    got, g_got = grads(lambda: sc.outputs(rows))
    want, g_want = grads(hand)
    assert torch.allclose(got, want, atol=1e-5)
    # the last token reads something else: the comparison can fail
    last = ScalarHeadModel(rm.lm)
    last.head.load_state_dict(rm.head.state_dict())
    with torch.no_grad():
        assert (last(*pad_batch([t.ids[r] for r in rows], tok.pad_token_id, "right")) - want).abs().max() > 1e-3
    assert set(g_got) <= set(g_want) and len(g_got) > 2  # the trained part (top layers + head, or all)
    for n, g in g_got.items():
        assert torch.allclose(g, g_want[n], atol=1e-4), n


def test_standardized_features_need_the_head_only(data, tmp_path):
    with pytest.raises(AmbientError, match="train_layers=0 and cache_features=true"):
        R.train_reward(cfg(data, tmp_path / "x", "standardize_features=true", "train_layers=-1"))


def test_full_fine_tuning_with_mean_pooling_saves_and_scores_it(data, tmp_path):
    out = R.train_reward(cfg(data, tmp_path / "rm", "pooling=mean", "train_layers=-1", "max_steps=2"))
    assert json.loads((out / "reward_config.json").read_text())["pooling"] == "mean"
    rm = load_reward_model(out)
    assert rm.pooling == "mean"
    inputs = RewardInputs.from_pretrained(out)
    e = inputs.encode("What is a good first paper to read?", "Start with a survey of the field.")
    got = RewardFunction(rm).texts(["What is a good first paper to read?"], ["Start with a survey of the field."])
    with torch.no_grad():
        h = rm.hidden_states(torch.tensor([e.input_ids]), torch.ones(1, len(e.input_ids), dtype=torch.long))[0]
        raw = rm.head(h[e.prompt_len:].mean(0))[0]
    assert float(got[0]) == pytest.approx(float((raw - rm.norm_mean) / rm.norm_std), abs=1e-5)


def test_feature_moments_by_hand_and_across_processes():
    from ambient_rlhf.train.reward.scoring import feature_moments

    feats = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0])]
    mean, std = feature_moments(feats)
    assert mean.tolist() == [2.0, 4.0] and std.tolist() == [1.0, 2.0]
    # a second process holding the feature (5, 10): the sums combine -> mean (3, 6),
    # variance ((4 + 0 + 4) / 3, (16 + 0 + 16) / 3)
    other = (1, torch.tensor([5.0, 10.0], dtype=torch.float64), torch.tensor([25.0, 100.0], dtype=torch.float64))
    mean, std = feature_moments(feats, gather=lambda parts: parts + [other])
    assert mean.tolist() == [3.0, 6.0]
    assert std.tolist() == pytest.approx([(8 / 3) ** 0.5, (32 / 3) ** 0.5])


def test_standardised_head_folds_into_the_same_function():
    from ambient_rlhf.train.reward.scoring import HeadOnFeatures

    torch.manual_seed(0)
    x = torch.randn(20, 6) * torch.tensor([1.0, 100.0, 0.01, 5.0, 1.0, 30.0]) + 3.0
    m = HeadOnFeatures(torch.nn.Linear(6, 1))
    m.standardize(x.mean(0), x.std(0, unbiased=False))
    want = m(x)
    by_hand = m.head((x - x.mean(0)) / x.std(0, unbiased=False))
    m.fold()
    assert m.mean is None
    assert torch.allclose(want, by_hand, atol=1e-6) and torch.allclose(m(x), want, atol=1e-4)


def test_standardised_training_saves_a_folded_head(data, tmp_path):
    """The valid accuracy logged at the last step (standardised features) equals the saved
    model's on the same pairs (raw features through the folded head)."""
    out = R.train_reward(cfg(data, tmp_path / "std", "pooling=mean", "standardize_features=true", "eval_steps=1000",
                             "weight_decay=0.1", "eval_max_pairs=0"))
    from ambient_rlhf.logging import read_jsonl

    logged = [r for r in read_jsonl(out / "metrics.jsonl") if "rm/valid_accuracy" in r][-1]["rm/valid_accuracy"]
    ev = evaluate_reward(out, data, split="valid", out=tmp_path / "ev", loglik_model="none", plots=False, n_boot=50)
    assert ev["accuracy"]["value"] == pytest.approx(logged, abs=1e-9)
    assert json.loads((out / "reward_config.json").read_text())["standardize_features"] is True
    with pytest.raises(AmbientError, match="standardize_features"):
        R.train_reward(cfg(data, tmp_path / "z", "standardize_features=true", "train_layers=1"))


@pytest.mark.parametrize("pooling,n_top", [("last", 1), ("mean", 1), ("last", 2)])
def test_top_layers_run_each_shared_prompt_once(tiny_model_path, pooling, n_top):
    """Top layers on cached states with ``share_prompts``: a thread's responses attend to
    one pass of their prompt through the top layers.  Outputs and gradients against each
    text scored alone through the whole model, by hand; the top layer must see the
    distinct prompts once and then the responses alone (else nothing was shared)."""
    torch.manual_seed(1)
    tok = load_tokenizer(tiny_model_path)
    rm = ScalarHeadModel(load_causal_lm(tiny_model_path), meta={"pooling": pooling}).eval()
    t = R.TextTable.of(tok, 48, 16, "auto")
    qa = [("what is it?", "a stone"), ("a longer question, what is it really?", "no"),
          ("what is it?", "a bridge over the water and more"), ("a longer question, what is it really?", "yes it is"),
          ("what is it?", "hm")]
    rows = [t.add(q, a) for q, a in qa]

    def hand():
        out = []
        for r in rows:
            ids = torch.tensor([t.ids[r]])
            h = rm.hidden_states(ids, torch.ones_like(ids))[0]  # (T, d), this text alone
            out.append(rm.head(h[-1] if pooling == "last" else h[t.prompt_len[r]:].mean(0)))
        return torch.stack(out)

    def grads(fn):
        rm.zero_grad()
        out = fn()
        (out * torch.arange(1.0, 6.0).unsqueeze(1)).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in rm.named_parameters() if p.grad is not None}

    sc = R.Scorer(rm, t, "top", n_top, torch.device("cpu"), tok.pad_token_id)
    assert sc.module.can_share_prompts
    sc.share_prompts = True
    emb_shapes = []
    h_emb = rm.lm.get_input_embeddings().register_forward_hook(lambda m, a, o: emb_shapes.append(tuple(a[0].shape)))
    try:
        sc.prepare(rows, 8)  # the states into the top layers: each prompt once, its responses on top
    finally:
        h_emb.remove()
    assert [s[0] for s in emb_shapes] == [2, 5]
    plain = R.Scorer(rm, t, "top", n_top, torch.device("cpu"), tok.pad_token_id)
    plain.prepare(rows, 8)
    for r in rows:
        assert sc.cache[r].shape == plain.cache[r].shape == (len(t.ids[r]), rm.lm.config.hidden_size)
        assert torch.allclose(sc.cache[r], plain.cache[r], atol=1e-5)
    top = sc.module.layers[-1]
    shapes = []
    handle = top.register_forward_pre_hook(
        lambda m, a, kw: shapes.append(tuple((a[0] if a else kw["hidden_states"]).shape[:2])), with_kwargs=True)
    try:
        got, g_got = grads(lambda: sc.outputs(rows))
    finally:
        handle.remove()
    want, g_want = grads(hand)
    longest_prompt = max(t.prompt_len[r] for r in rows)
    longest_response = max(len(t.ids[r]) - t.prompt_len[r] for r in rows)
    assert shapes == [(2, longest_prompt), (5, longest_response)]  # 2 prompts once, then 5 responses
    assert torch.allclose(got, want, atol=1e-5)
    assert len(g_got) > 2 and set(g_got) <= set(g_want)
    for n, g in g_got.items():
        assert torch.allclose(g, g_want[n], atol=1e-4), n
    # the layer indices the shared path borrows (the cut layers index the cache from 0) are given back
    n = len(rm.lm.model.layers)
    assert [layer.self_attn.layer_idx for layer in sc.module.layers] == list(range(n - n_top, n))
