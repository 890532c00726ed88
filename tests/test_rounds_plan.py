"""``rounds: N`` in the run's plan: the stages of rounds 2..N, wired to each other, before
the report; the feedback source must fit the data.  No model runs here."""

from __future__ import annotations

import pytest

from ambient_rlhf import AmbientError
from ambient_rlhf.run import load_run_config, plan


def test_three_rounds_plan_and_wiring(tmp_path):
    cfg = load_run_config("demo-rounds", [f"out={tmp_path}"])
    assert cfg.rounds == 3 and cfg.feedback.prompts == 48
    stages = {s.name: s for s in plan(cfg)}
    names = list(stages)
    assert names[names.index("eval-steer") + 1:] == ["feedback-2", "mix-2", "rm-proxy-2", "rl-2", "eval-2", "feedback-3",
                                                    "mix-3", "rm-proxy-3", "rl-3", "eval-3", "report"]
    assert set(stages["report"].deps) == set(names[:-1])
    fb3 = stages["feedback-3"].config
    assert fb3["policy"] == str(tmp_path / "rl-2") and fb3["proxy"] == str(tmp_path / "rm-proxy-2")
    assert stages["mix-3"].config["feedback"] == {2: str(tmp_path / "feedback-2" / "data"),
                                                  3: str(tmp_path / "feedback-3" / "data")}
    rl3 = stages["rl-3"].config
    assert (rl3.policy, rl3.reference, rl3.reward) == (str(tmp_path / "rl-2"), str(tmp_path / "sft"),
                                                       str(tmp_path / "rm-proxy-3"))
    assert stages["rl-3"].resumable and stages["rm-proxy-3"].resumable
    ev3 = stages["eval-3"].config
    assert (ev3.policy, ev3.judge, ev3.reference) == (str(tmp_path / "rl-3"), str(tmp_path / "rm-gold"),
                                                      str(tmp_path / "sft"))
    rm3 = stages["rm-proxy-3"].config
    assert rm3.data == [str(tmp_path / "mix-3")] and rm3.train_half == "all" and rm3.seed == cfg.rm.seed


def test_one_round_is_the_plain_run(tmp_path):
    names = [s.name for s in plan(load_run_config("demo", [f"out={tmp_path}"]))]
    assert not any(n.startswith(("feedback", "mix", "rl-")) for n in names)


def test_feedback_source_must_fit_the_data(tmp_path):
    with pytest.raises(AmbientError, match="feedback.source=simulated needs the simulated community"):
        plan(load_run_config("demo", [f"out={tmp_path}", "rounds=2", "sources=[x.ndjson]"]))
    with pytest.raises(AmbientError, match="feedback.held_out_rm=DIR"):
        plan(load_run_config("demo", [f"out={tmp_path}", "rounds=2", "feedback.source=held-out-rm"]))
    with pytest.raises(AmbientError, match="feedback.labels=FILE"):
        plan(load_run_config("demo", [f"out={tmp_path}", "rounds=2", "feedback.source=labels"]))
    with pytest.raises(AmbientError, match="rounds=0"):
        plan(load_run_config("demo", [f"out={tmp_path}", "rounds=0"]))


def test_rl_reference_is_refused_with_lora():
    from ambient_rlhf.train.rl.config import RLConfig, _validate

    cfg = RLConfig(data="d", out="o", reference="sft")
    _validate(cfg, 1)  # a separate reference is fine without LoRA
    cfg.lora.enabled = True
    with pytest.raises(AmbientError, match="reference=sft with lora.enabled"):
        _validate(cfg, 1)


def test_feedback_config_documented():
    from ambient_rlhf.config import check_documented
    from ambient_rlhf.data.feedback import FeedbackConfig

    assert check_documented(FeedbackConfig) == []
