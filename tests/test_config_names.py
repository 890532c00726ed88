"""One vocabulary for training keys across ``sft``, ``rm``, ``rl`` and ``dpo`` (issue 14 item 7):
the same setting has the same name in every stage, the name transformers' and TRL's
``TrainingArguments`` give it; old names are refused with the new name; every
command-line flag has help text."""

import contextlib
import dataclasses
import io
import re

import pytest

from ambient_rlhf.config import ConfigError, config_help, load_config, renamed_keys
from ambient_rlhf.train.common import warmup_count
from ambient_rlhf.train.dpo.config import DPOConfig
from ambient_rlhf.train.reward.config import RewardConfig
from ambient_rlhf.train.rl.config import RLConfig
from ambient_rlhf.train.sft.config import SFTConfig

STAGES = (SFTConfig, RewardConfig, RLConfig, DPOConfig)
# settings every trainer has, written once here by hand
SHARED = ("learning_rate", "lr_scheduler_type", "max_steps", "save_steps", "seed", "mixed_precision")
# names of transformers.TrainingArguments that a stage uses with the same meaning
HF_NAMES = ("learning_rate", "lr_scheduler_type", "max_steps", "num_train_epochs", "max_grad_norm", "warmup_steps",
            "weight_decay", "per_device_train_batch_size", "gradient_accumulation_steps", "logging_steps",
            "eval_steps", "save_steps", "save_total_limit", "adam_epsilon", "seed")


def _names(cls):
    return {f.name for f in dataclasses.fields(cls)}


def test_shared_settings_have_one_name_in_every_stage():
    for cls in STAGES:
        assert set(SHARED) <= _names(cls), (cls.__name__, set(SHARED) - _names(cls))


def test_no_stage_keeps_a_name_another_stage_retired():
    # `batch_size` stays in rm (units per optimizer step) and rl (prompts per iteration, all
    # processes): a global batch, not sft's per-process micro-batch, which is now
    # per_device_train_batch_size as in transformers (dpo's too: pairs per micro-batch per process)
    retired = {old for cls in STAGES for old in renamed_keys(cls)} - {"batch_size"}
    for cls in STAGES:
        assert not (retired & _names(cls)), (cls.__name__, retired & _names(cls))


def test_the_names_are_transformers_names():
    from transformers import TrainingArguments

    hf = {f.name for f in dataclasses.fields(TrainingArguments)}
    assert set(HF_NAMES) <= hf
    assert set().union(*(_names(c) for c in STAGES)) >= set(HF_NAMES)


@pytest.mark.parametrize("cls,old,new,value", [
    (SFTConfig, "lr", "learning_rate", 3e-4), (SFTConfig, "steps", "max_steps", 7),
    (SFTConfig, "grad_accum", "gradient_accumulation_steps", 3), (SFTConfig, "batch_size", "per_device_train_batch_size", 5),
    (SFTConfig, "checkpoint_every", "save_steps", 9), (RewardConfig, "grad_clip", "max_grad_norm", 0.5),
    (RewardConfig, "epochs", "num_train_epochs", 2.0), (RewardConfig, "warmup_ratio", "warmup_steps", 0.1),
    (RLConfig, "steps", "max_steps", 11), (RLConfig, "response_length", "max_response_tokens", 24),
    (RLConfig, "adam_eps", "adam_epsilon", 1e-6), (RLConfig, "keep_checkpoints", "save_total_limit", 4),
    (DPOConfig, "lr", "learning_rate", 5e-6), (DPOConfig, "schedule", "lr_scheduler_type", "cosine"),
    (DPOConfig, "steps", "max_steps", 7), (DPOConfig, "epochs", "num_train_epochs", 2.0),
    (DPOConfig, "batch_size", "per_device_train_batch_size", 3),
    (DPOConfig, "grad_accum", "gradient_accumulation_steps", 5),
    (DPOConfig, "log_every", "logging_steps", 2), (DPOConfig, "eval_every", "eval_steps", 20),
    (DPOConfig, "checkpoint_every", "save_steps", 9), (DPOConfig, "keep_checkpoints", "save_total_limit", 3)])
def test_an_old_name_is_refused_with_the_new_name(cls, old, new, value):
    with pytest.raises(ConfigError, match=f"'{old}' was renamed '{new}'"):
        load_config(cls, None, [f"{old}={value}"])


def test_a_whole_run_warmup_ratio_has_no_warmup_steps_equivalent():
    with pytest.raises(ConfigError, match="warmup_ratio.*give warmup_steps=<steps>"):
        load_config(RewardConfig, None, ["warmup_ratio=1"])


def test_old_names_are_refused_in_files_and_run_configs(tmp_path):
    from ambient_rlhf.run_config import load_run_config

    f = tmp_path / "c.yaml"
    f.write_text("max_steps: 5\nlr: 1.0e-4\n")
    with pytest.raises(ConfigError, match="'lr' was renamed 'learning_rate'.*write learning_rate=0.0001"):
        load_config(SFTConfig, f, [])
    with pytest.raises(ConfigError, match="'sft.steps' was renamed 'sft.max_steps'"):
        load_run_config(None, ["sft.steps=3"])
    with pytest.raises(ConfigError, match="'dpo.batch_size' was renamed 'dpo.per_device_train_batch_size'"):
        load_run_config(None, ["dpo.batch_size=2"])
    with pytest.raises(ConfigError, match="'rl.prompt_tuning.lr' was renamed 'rl.prompt_tuning.learning_rate'"):
        load_run_config(None, ["rl.prompt_tuning.lr=0.01"])
    with pytest.raises(ConfigError, match="write warmup_steps=0.1"):
        load_config(RewardConfig, None, ["warmup_ratio=0.1"])


def test_warmup_steps_is_a_count_or_a_fraction():
    assert warmup_count(3, 100) == 3  # >= 1: steps
    assert warmup_count(0.25, 10) == 2  # < 1: a fraction of the steps, rounded down (2.5 -> 2)
    assert warmup_count(0.05, 100) == 5 and warmup_count(0, 100) == 0


def test_help_config_lists_the_old_names():
    text = config_help(RLConfig)
    assert "response_length -> max_response_tokens" in text and "steps -> max_steps" in text


COMMANDS = [["data", "build"], ["data", "simulate"], ["sft"], ["generate"], ["rm"], ["rm", "eval"],
            ["rm", "combine"], ["rl"], ["dpo"], ["eval"], ["report"], ["run"], ["export", "trl"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_every_flag_has_help_text(cmd):
    """argparse prints an option without help as its flags alone, the next line being
    another option; with help, the text follows on the line or on an indented next line."""
    from ambient_rlhf.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
        main([*cmd, "--help"])
    lines = buf.getvalue().splitlines()
    section, seen, missing = None, 0, []
    for i, line in enumerate(lines):
        if re.match(r"^\S.*:$", line):
            section = line
            continue
        if section not in ("positional arguments:", "options:") or line.startswith("   "):
            continue
        m = re.match(r"^  (\S.*?)(?:\s{2,}(\S.*))?$", line)
        if m:
            seen += 1
            if m.group(2) is None and not (i + 1 < len(lines) and re.match(r"^\s{8,}\S", lines[i + 1])):
                missing.append(m.group(1))
    assert seen >= 2 and not missing, (seen, missing)
