import pytest

from ambient_rlhf.rl.kl_control import AdaptiveKLController, FixedKLController


def test_adaptive_by_hand():
    c = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    # KL 9 -> e = clip(9/6 - 1 = 0.5) = 0.2; beta *= 1 + 0.2 * 64/10000 = 1.00128
    c.update(9.0, 64)
    assert c.value == pytest.approx(0.2 * 1.00128, rel=1e-12)
    # KL 5.4 -> e = -0.1; beta *= 1 - 0.1 * 512/10000 = 0.99488
    c.update(5.4, 512)
    assert c.value == pytest.approx(0.2 * 1.00128 * 0.99488, rel=1e-12)
    # KL 0 -> e clipped at -0.2
    c2 = AdaptiveKLController(1.0, 6.0, 100)
    c2.update(0.0, 10)
    assert c2.value == pytest.approx(1 - 0.2 * 0.1)
    s = c.state_dict()
    c3 = AdaptiveKLController(5.0, 6.0, 10000)
    c3.load_state_dict(s)
    assert c3.value == c.value


def test_fixed():
    c = FixedKLController(0.05)
    c.update(100.0, 10)
    assert c.value == 0.05
