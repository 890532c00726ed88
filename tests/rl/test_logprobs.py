import math

import torch

from ambient_rlhf.rl.logprobs import entropy_from_logits, logprobs_from_logits


def test_logprobs_by_hand_with_temperature():
    # logits (0, ln 3) at temperature 1: softmax = (1/4, 3/4)
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    tok = torch.tensor([[1]])
    assert abs(logprobs_from_logits(logits, tok).item() - math.log(0.75)) < 1e-6
    # temperature 0.5 doubles the logits: (0, ln 9) -> p(1) = 9/10
    assert abs(logprobs_from_logits(logits, tok, 0.5).item() - math.log(0.9)) < 1e-6


def test_entropy_by_hand():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0]]])
    assert abs(entropy_from_logits(logits).item() - math.log(4)) < 1e-6
    # temperature does not change a uniform distribution
    assert abs(entropy_from_logits(logits, 0.7).item() - math.log(4)) < 1e-6
