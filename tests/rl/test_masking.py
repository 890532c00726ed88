import pytest
import torch

from ambient_rlhf.rl.masking import last_token_index, masked_mean, masked_var, masked_whiten


def test_masked_mean_var_by_hand():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # real entries 1, 2, 3 -> mean 2; population var ((1)+(0)+(1))/3 = 2/3; unbiased 2/2 = 1
    assert masked_mean(x, m).item() == pytest.approx(2.0, abs=1e-7)
    assert masked_var(x, m).item() == pytest.approx(2 / 3, abs=1e-7)
    assert masked_var(x, m, unbiased=True).item() == pytest.approx(1.0, abs=1e-7)
    # per row: row 0 -> 1.5, row 1 -> 3
    assert torch.allclose(masked_mean(x, m, dim=1), torch.tensor([1.5, 3.0]))
    # an empty row gives 0 rather than NaN
    assert masked_mean(x, torch.zeros_like(m), dim=1).tolist() == [0.0, 0.0]


def test_whiten_subtracts_mean_by_default():
    x = torch.tensor([[1.0, 2.0, 7.0], [3.0, 9.0, 9.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    w = masked_whiten(x, m, eps=0.0)
    # (x - 2) / sqrt(2/3): 1 -> -1.2247, 2 -> 0, 3 -> 1.2247; padding -> 0
    s = (2 / 3) ** 0.5
    expect = torch.tensor([[-1 / s, 0.0, 0.0], [1 / s, 0.0, 0.0]])
    assert torch.allclose(w, expect, atol=1e-6)
    assert masked_mean(w, m).abs().item() < 1e-6
    # shift_mean=False keeps the mean (2019 whiten(rewards, shift_mean=False)): x/s - 2/s + 2
    k = masked_whiten(x, m, shift_mean=False, eps=0.0)
    assert torch.allclose(k[m.bool()], torch.tensor([-1 / s + 2, 2.0, 1 / s + 2]), atol=1e-6)


def test_last_token_index_any_padding_side():
    # right padding: last 1 at 2 and 3; left padding: always T-1 = 3; a gap (a response
    # mask with a dropped token) still gives the last set position, 2; bool masks too
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 1]])
    gap = torch.tensor([[1, 0, 1, 0]])
    assert last_token_index(right).tolist() == [2, 3]
    assert last_token_index(left).tolist() == [3, 3]
    assert last_token_index(gap.bool()).tolist() == [2]
