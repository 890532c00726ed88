"""Reward models that hold the same bottom layers (a proxy and a gold model trained from
one base with their top layers trained, head-only models on one backbone) score a batch
with those layers run once, and give exactly the rewards each gives alone."""

import pytest
import torch
from helpers import make_data_dir

from ambient_rlhf.config import load_config
from ambient_rlhf.models.bodies import body_of
from ambient_rlhf.models.reward_inputs import RewardFunction
from ambient_rlhf.models.reward_model import load_reward_model
from ambient_rlhf.models.shared_bottom import shared_bottom

QA = [("Is a stone alive?", "No."), ("How long is a thesis?", "As long as it needs to be, and no longer."),
      ("Is a stone alive?", "Only in stories."), ("Should I email the professor again?", "Yes, politely."),
      ("How long is a thesis?", "About two hundred pages in my field."), ("Why is the sky blue?", "Scattering."),
      ("Is a stone alive?", "It depends on what you call alive, but no.")]


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    from ambient_rlhf.train.reward import RewardConfig, train_reward

    root = tmp_path_factory.mktemp("sb")
    data = make_data_dir(root / "askfoo", n_threads=12, k=3)
    cfg = load_config(RewardConfig, None, [f"data={data}", "model=tiny-random", f"out={root / 'rm'}", "max_steps=2",
                                           "learning_rate=1e-2", "eval_split=", "eval_steps=0", "train_layers=1",
                                           "objective=pairwise"])
    train_reward(cfg)
    return root / "rm"


def _changed(rm_dir, part: str, seed: int):
    """The reward model of ``rm_dir`` with one part's weights moved: ``layer1`` (the top
    layer), ``norm`` (the final norm), ``head``, ``embed`` (the embeddings)."""
    rm = load_reward_model(rm_dir).eval()
    body = body_of(rm.lm)
    mod = {"layer1": body.layers[1], "norm": body.norm, "head": rm.head, "embed": body.get_input_embeddings()}[part]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mod.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return rm


def test_shared_bottom_counts_the_layers_held_bit_for_bit(rm_dir):
    a = load_reward_model(rm_dir)
    assert len(body_of(a.lm).layers) == 2  # the tiny model: layer 0, layer 1, norm
    assert shared_bottom([a, _changed(rm_dir, "layer1", 1)]) == 1
    assert shared_bottom([a, _changed(rm_dir, "norm", 1)]) == 2  # both layers, not the norm
    assert shared_bottom([a, _changed(rm_dir, "head", 1)]) == 3  # the whole body
    assert shared_bottom([a, _changed(rm_dir, "embed", 1)]) == 0
    assert shared_bottom([a, _changed(rm_dir, "head", 1), _changed(rm_dir, "layer1", 2)]) == 1
    assert shared_bottom([a]) == 0


def _layer0_calls(models):
    calls = []
    hooks = [body_of(m.lm).layers[0].register_forward_hook(lambda mod, a, o, k=k: calls.append(k))
             for k, m in enumerate(models)]
    return calls, hooks


@pytest.mark.parametrize("share_prompts", [True, False])
@pytest.mark.parametrize("part", ["layer1", "norm", "head"])
def test_models_scored_together_equal_each_alone_bit_for_bit(rm_dir, part, share_prompts):
    """Three models (the trained one and two with a top part moved) scored together, in
    batches of 3: the rewards equal each model's own scoring exactly, and after the first
    batch (checked against each alone) the second and third models' bottom layer no
    longer runs."""
    models = [load_reward_model(rm_dir).eval(), _changed(rm_dir, part, 1), _changed(rm_dir, part, 2)]
    prompts, responses = [q for q, _ in QA], [a for _, a in QA]
    ended = [True, False, True, True, False, True, True]
    alone = [RewardFunction(m, batch_size=3, share_prompts=share_prompts).texts(prompts, responses, None, ended)
             for m in models]
    assert all(not torch.equal(alone[0], x) for x in alone[1:])  # the moved parts change the rewards
    fn = RewardFunction.of_models(models, batch_size=3, share_prompts=share_prompts)
    assert fn.groups == [[0, 1, 2]]
    calls, hooks = _layer0_calls(models)
    try:
        got = fn.each_texts(prompts, responses, None, ended)
        first = list(calls)
        calls.clear()
        again = fn.each_texts(prompts, responses, None, ended)
    finally:
        for h in hooks:
            h.remove()
    assert fn.joint_checked == {0: True}
    for a, b, c in zip(alone, got, again):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert first.count(1) > 0 and first.count(2) > 0  # the first batch: each model alone as well
    assert calls.count(1) == 0 and calls.count(2) == 0 and calls.count(0) > 0  # then the bottom once
    # the sum over parts is what texts() gives
    assert torch.equal(fn.texts(prompts, responses, None, ended), alone[0] + alone[1] + alone[2])


def test_models_without_a_shared_bottom_are_scored_each_alone(rm_dir):
    models = [load_reward_model(rm_dir).eval(), _changed(rm_dir, "embed", 1)]
    fn = RewardFunction.of_models(models, batch_size=3)
    assert fn.groups == [[0], [1]]
    prompts, responses = [q for q, _ in QA], [a for _, a in QA]
    got = fn.each_texts(prompts, responses)
    for m, g in zip(models, got):
        assert torch.equal(RewardFunction(m, batch_size=3).texts(prompts, responses), g)
    assert RewardFunction.of_models(models[:1]).groups == [[0]]
    assert RewardFunction.of_models([models[0], _changed(rm_dir, "head", 1)], joint=False).groups == [[0], [1]]
