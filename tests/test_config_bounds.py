"""Invalid values are refused when the config is built, naming the key, in every stage
(issue 13 item 4).  Before, ``rm lr=-0.1`` trained with the automatic rate while the
manifest said -0.1, and a negative sft/rl lr surfaced as torch's ValueError traceback."""

import pytest

from ambient_rlhf.config import ConfigError, check_bounds, config_help, load_config
from ambient_rlhf.data.config import DataConfig
from ambient_rlhf.eval.policy_eval import EvalConfig
from ambient_rlhf.train.reward.config import RewardConfig, _validate as validate_rm
from ambient_rlhf.train.rl.config import RLConfig
from ambient_rlhf.train.sft.config import SFTConfig

CASES = [
    (SFTConfig, "learning_rate", -1e-5), (SFTConfig, "per_device_train_batch_size", 0), (SFTConfig, "max_steps", -3),
    (SFTConfig, "gradient_accumulation_steps", 0), (SFTConfig, "num_train_epochs", 0), (SFTConfig, "lora.r", 0),
    (SFTConfig, "warmup_steps", -1),
    (RewardConfig, "learning_rate", -0.1), (RewardConfig, "batch_size", 0), (RewardConfig, "max_steps", -1),
    (RewardConfig, "warmup_steps", -0.5), (RewardConfig, "train_layers", -2), (RewardConfig, "max_grad_norm", -1),
    (RLConfig, "learning_rate", -1e-5), (RLConfig, "max_steps", -1), (RLConfig, "batch_size", 0), (RLConfig, "top_p", 0),
    (RLConfig, "kl.init_beta", -0.1), (RLConfig, "gamma", 1.5), (RLConfig, "temperature", 0),
    (RLConfig, "max_response_tokens", 0),
    (EvalConfig, "n_prompts", 0), (EvalConfig, "batch_size", 0), (EvalConfig, "temperature", -1),
    (DataConfig, "filters.min_responses", 0), (DataConfig, "splits.train", -0.5),
    (DataConfig, "source.window_days", -1), (DataConfig, "max_bad_fraction", 2),
]


@pytest.mark.parametrize("cls,key,value", CASES, ids=[f"{c.__name__}-{k}={v}" for c, k, v in CASES])
def test_out_of_range_value_is_refused_naming_the_key(cls, key, value):
    with pytest.raises(ConfigError, match=rf"config key '{key}': \S+ is out of range; it must be [<>]"):
        load_config(cls, None, [f"{key}={value}"])


@pytest.mark.parametrize("cls,key,value", [(RewardConfig, "learning_rate", 0.0), (RewardConfig, "train_layers", -1),
                                           (SFTConfig, "max_steps", 0), (RLConfig, "kl.init_beta", 0.0),
                                           (RLConfig, "top_p", 1.0), (DataConfig, "source.window_days", 0)])
def test_boundary_values_that_mean_something_are_accepted(cls, key, value):
    load_config(cls, None, [f"{key}={value}"])  # 0 = automatic / epochs / off: documented meanings


def test_nan_is_out_of_every_range():
    with pytest.raises(ConfigError, match="'learning_rate'"):
        load_config(SFTConfig, None, ["learning_rate=.nan"])


def test_configs_built_in_python_are_checked_by_the_stage():
    # ambient run and scripts build configs directly; the stage's validation checks the bounds
    with pytest.raises(ConfigError, match="'learning_rate': -0.1"):
        validate_rm(RewardConfig(data=["d"], out="o", learning_rate=-0.1))
    with pytest.raises(ConfigError, match="'lora.dropout'"):
        cfg = SFTConfig()
        cfg.lora.dropout = 1.0
        check_bounds(cfg)


def test_help_config_shows_the_range():
    assert "per_device_train_batch_size = 4   [int, >= 1]" in config_help(SFTConfig)
