"""GAE and shaping against an independent numpy transcription of the 2019 loop."""

import numpy as np
import torch

from ambient_rlhf.rl.advantages import (RunningBaseline, gae, mean_baseline_advantages, rloo_advantages,
                                        scale_advantages)
from ambient_rlhf.rl.masking import masked_whiten
from ambient_rlhf.rl.rewards import shaped_rewards


def reference_2019(scores, logprobs, ref_logprobs, values, kl_coef, gamma, lam):
    """Transcription of lm-human-preferences train_policy.py (compute_rewards + the GAE
    loop in PPOTrainer.loss + utils.whiten), fixed-length responses, numpy, loop-based."""
    B, T = logprobs.shape
    rewards = np.zeros((B, T))
    for b in range(B):
        for t in range(T):
            rewards[b, t] = -kl_coef * (logprobs[b, t] - ref_logprobs[b, t])
        rewards[b, T - 1] += scores[b]
    advantages = np.zeros((B, T))
    for b in range(B):
        lastgaelam = 0.0
        for t in reversed(range(T)):
            nextvalue = values[b, t + 1] if t < T - 1 else 0.0
            delta = rewards[b, t] + gamma * nextvalue - values[b, t]
            lastgaelam = delta + gamma * lam * lastgaelam
            advantages[b, t] = lastgaelam
    returns = advantages + values
    flat = advantages.reshape(-1)
    mean = sum(flat) / len(flat)
    var = sum((a - mean) ** 2 for a in flat) / len(flat)
    whitened = (advantages - mean) / np.sqrt(var + 1e-8)
    return rewards, advantages, returns, whitened


def test_shaping_and_gae_match_2019_loop():
    rng = np.random.default_rng(0)
    B, T = 3, 6
    lp, ref, v = rng.normal(size=(B, T)), rng.normal(size=(B, T)), rng.normal(size=(B, T))
    scores = rng.normal(size=B)
    exp_r, exp_adv, exp_ret, exp_w = reference_2019(scores, lp, ref, v, 0.15, 1.0, 0.95)
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    mask = torch.ones(B, T)
    r, _ = shaped_rewards(t(scores), t(lp), t(ref), mask, beta=0.15)
    adv, ret = gae(r, t(v), mask, gamma=1.0, lam=0.95)
    w = masked_whiten(adv, mask)
    np.testing.assert_allclose(r.numpy(), exp_r, rtol=0, atol=1e-12)
    np.testing.assert_allclose(adv.numpy(), exp_adv, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ret.numpy(), exp_ret, rtol=0, atol=1e-12)
    np.testing.assert_allclose(w.numpy(), exp_w, rtol=0, atol=1e-9)


def test_padded_rows_equal_2019_loop_on_the_real_prefix():
    # a row that ended after 3 tokens must get the 2019 answer for a length-3 episode
    rng = np.random.default_rng(1)
    T = 5
    lp, ref, v = rng.normal(size=(1, T)), rng.normal(size=(1, T)), rng.normal(size=(1, T))
    s = rng.normal(size=1)
    _, exp_adv, exp_ret, _ = reference_2019(s, lp[:, :3], ref[:, :3], v[:, :3], 0.2, 0.9, 0.8)
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    r, _ = shaped_rewards(t(s), t(lp), t(ref), mask, beta=0.2)
    adv, ret = gae(r, t(v), mask, gamma=0.9, lam=0.8)
    np.testing.assert_allclose(adv[:, :3].numpy(), exp_adv, atol=1e-12)
    np.testing.assert_allclose(ret[:, :3].numpy(), exp_ret, atol=1e-12)
    assert adv[:, 3:].abs().max() == 0 and ret[:, 3:].abs().max() == 0


def test_gae_by_hand():
    # T=2, gamma=1, lam=0.5, rewards (0, 1), values (0.5, 0.25)
    # t=1: delta = 1 + 0 - 0.25 = 0.75 -> A1 = 0.75
    # t=0: delta = 0 + 0.25 - 0.5 = -0.25 -> A0 = -0.25 + 0.5 * 0.75 = 0.125
    adv, ret = gae(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.25]]), torch.ones(1, 2), 1.0, 0.5)
    assert torch.allclose(adv, torch.tensor([[0.125, 0.75]]))
    assert torch.allclose(ret, torch.tensor([[0.625, 1.0]]))


def test_rloo_by_hand():
    # prompt 0: rewards 1, 2, 6 -> baselines (2+6)/2=4, (1+6)/2=3.5, (1+2)/2=1.5 -> -3, -1.5, 4.5
    # prompt 1: 0, 0, 3 -> baselines 1.5, 1.5, 0 -> -1.5, -1.5, 3
    r = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
    assert rloo_advantages(r, 3).tolist() == [-3.0, -1.5, 4.5, -1.5, -1.5, 3.0]


def test_baselines():
    assert mean_baseline_advantages(torch.tensor([1.0, 3.0])).tolist() == [-1.0, 1.0]
    b = RunningBaseline(decay=0.5)
    # first batch: baseline = its own mean 2 -> (-1, 1); b = 2
    assert b.advantages(torch.tensor([1.0, 3.0])).tolist() == [-1.0, 1.0]
    # second batch mean 6: advantages against b=2 -> (2, 6); b = 0.5*2 + 0.5*6 = 4
    assert b.advantages(torch.tensor([4.0, 8.0])).tolist() == [2.0, 6.0]
    assert b.value == 4.0


def test_scale_advantages_keeps_the_centre():
    # A = (1, 3, 5, 7): mean 4, population variance (9 + 1 + 1 + 9) / 4 = 5 -> A / sqrt(5),
    # not (A - 4) / sqrt(5) as whitening would give
    a = torch.tensor([1.0, 3.0, 5.0, 7.0], dtype=torch.float64)
    expect = torch.tensor([1.0, 3.0, 5.0, 7.0], dtype=torch.float64) / 5 ** 0.5
    assert torch.allclose(scale_advantages(a, eps=0.0), expect, rtol=0, atol=1e-12)
    # eps guards a batch of equal advantages: 2 / sqrt(0 + 1e-8) = 2e4
    assert scale_advantages(torch.tensor([2.0, 2.0], dtype=torch.float64)).tolist() == [2e4, 2e4]
    # for centred advantages (mean and leave-one-out baselines) it equals whitening
    c = a - a.mean()
    assert torch.allclose(scale_advantages(c), masked_whiten(c[None], torch.ones(1, 4))[0], atol=1e-12)
