"""KL coefficient controllers (Ziegler et al. 2019, ``train_policy.py``).

Adaptive::

    e = clip(KL / target - 1, -0.2, 0.2)
    beta <- beta * (1 + e * n_steps / horizon)

where ``KL`` is the batch mean of the per-sequence summed KL (``objective/kl``) and
``n_steps`` the number of episodes (rollouts) in the batch.  The 2019 defaults are
``horizon = 10000`` episodes; the target is task-specific (6 nats in the N details).
"""

from __future__ import annotations

import numpy as np


class FixedKLController:
    """``beta`` stays at its initial value."""

    def __init__(self, init_beta: float):
        self.value = float(init_beta)

    def update(self, current: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, s: dict) -> None:
        self.value = float(s["value"])


class AdaptiveKLController:
    """Proportional controller steering the KL toward ``target`` (Ziegler et al. 2019)."""

    def __init__(self, init_beta: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError("adaptive KL needs target > 0 and horizon > 0")
        self.value = float(init_beta)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current: float, n_steps: int) -> None:
        """``current``: mean summed KL of the batch; ``n_steps``: episodes in the batch."""
        proportional_error = float(np.clip(current / self.target - 1, -0.2, 0.2))
        mult = 1 + proportional_error * n_steps / self.horizon
        self.value *= mult

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, s: dict) -> None:
        self.value = float(s["value"])
