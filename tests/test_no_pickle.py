"""Nothing ambient-rlhf reads is unpickled.

A pickle payload (an object whose ``__reduce__`` creates a marker file, the stand-in for any
code a pickle can run) is planted in every file the project reads back: checkpoint state,
RL trainable weights, the reward head, the feature cache; under the names earlier versions
used (``*.pt``) and under today's names.  The payload must never run, and the user must get
a clear error naming the file (or, for the cache, a warning and a recomputation)."""

from __future__ import annotations

import pickle
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import make_data_dir

from ambient_rlhf import AmbientError
from ambient_rlhf.checkpoint import save_checkpoint
from ambient_rlhf.cli import main
from ambient_rlhf.models.features import FeatureStore
from ambient_rlhf.models.heads import ScalarHeadModel
from ambient_rlhf.models.reward_model import load_reward_model
from ambient_rlhf.models.load import load_causal_lm, load_tokenizer


class Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling creates the marker file


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "PAYLOAD_RAN"


def plant(path: Path, marker: Path) -> None:
    """The payload as torch.save writes it for ``*.pt`` names, as a bare pickle otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".pt":
        torch.save({"weight": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"weight": Payload(marker)}))


def test_the_payload_runs_when_unpickled(tmp_path, marker):
    """The control: the planted files do run code when unpickled, so the tests below can fail."""
    plant(tmp_path / "a.pt", marker)
    torch.load(tmp_path / "a.pt", weights_only=False)
    assert marker.exists()
    marker.unlink()
    plant(tmp_path / "a.safetensors", marker)
    pickle.loads((tmp_path / "a.safetensors").read_bytes())
    assert marker.exists()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data_dir(tmp_path_factory.mktemp("nopickle") / "data", n_threads=24, k=4)


def stage_argv(stage: str, data: Path, out: Path, model: str) -> list[str]:
    if stage == "sft":
        return ["sft", "--data", str(data), "--model", model, "--out", str(out), "--resume", "per_device_train_batch_size=2"]
    if stage == "rm":
        return ["rm", "--data", str(data), "--model", model, "--out", str(out), "--resume", "eval_split=",
                "eval_steps=0"]
    return ["rl", "--policy", model, "--data", str(data), "--out", str(out), "--resume", "--algo", "rloo",
            "reward=token-count:0-4095", "max_steps=2", "batch_size=2", "rloo_k=2", "max_response_tokens=4",
            "missing_eos_score=null"]


def record_stage(stage: str, data: Path, out: Path, model: str) -> None:
    """Make ``out`` an interrupted run of the config ``stage_argv`` gives, as the stage
    itself records it when it starts (``ambient_rlhf.outdir``), so the checkpoint reader,
    not the output-dir policy, is what meets the planted files."""
    from ambient_rlhf.config import load_config, to_dict
    from ambient_rlhf.outdir import NOT_RESULT_KEYS, prepare_out

    if stage == "sft":
        from ambient_rlhf.train.sft import SFTConfig as C
        keys, ignore = [f"data={data}", f"model={model}", f"out={out}", "resume=true", "per_device_train_batch_size=2"], NOT_RESULT_KEYS
    elif stage == "rm":
        from ambient_rlhf.train.reward import RewardConfig as C
        keys = [f"data={data}", f"model={model}", f"out={out}", "resume=true", "eval_split=", "eval_steps=0"]
        ignore = NOT_RESULT_KEYS + ("feature_cache",)
    else:
        from ambient_rlhf.train.rl import RLConfig as C
        keys = [f"policy={model}", f"data={data}", f"out={out}", "resume=true", "algo=rloo", "reward=token-count:0-4095",
                "max_steps=2", "batch_size=2", "rloo_k=2", "max_response_tokens=4", "missing_eos_score=null"]
        ignore = NOT_RESULT_KEYS
    prepare_out(out, stage, to_dict(load_config(C, None, keys)), ignore=ignore)


def run_cli(argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("stage", ["sft", "rm", "rl"])
def test_old_pickle_checkpoint_is_refused(stage, data, tmp_path, marker, capsys, tiny_model_path):
    """A checkpoint directory of an earlier version: state.pt (+ RL's *_trainable.pt)."""
    out = tmp_path / "out"
    record_stage(stage, data, out, tiny_model_path)
    d = out / "checkpoints" / "step-1"
    for name in ("state.pt", "policy_trainable.pt", "value_trainable.pt"):
        plant(d / name, marker)
    rc, err = run_cli(stage_argv(stage, data, out, tiny_model_path), capsys)
    assert not marker.exists()
    assert rc == 2 and "step-1" in err and "old format (state.pt, a Python pickle)" in err, err
    assert "without --resume" in err
    # without the stage record (a directory of an earlier version), the output-dir policy
    # refuses the directory before any file in it is read
    (out / "stage.json").unlink()
    rc, err = run_cli(stage_argv(stage, data, out, tiny_model_path), capsys)
    assert rc == 2 and "holds files no ambient stage wrote" in err and not marker.exists(), err


def _copy_model(src: str):
    def save_models(d: Path) -> None:
        shutil.copytree(src, d / "model")

    return save_models


@pytest.mark.parametrize("stage,name", [("sft", "state.safetensors"), ("rm", "state.json"),
                                        ("rl", "state.safetensors"), ("rl", "policy_trainable.safetensors")])
def test_payload_under_todays_names_is_refused(stage, name, data, tmp_path, marker, capsys, tiny_model_path):
    """Today's names, with the checksums rewritten to match (as someone who can write the
    directory can): the formats themselves refuse the payload."""
    from ambient_rlhf.checkpoint import write_checksums

    out = tmp_path / "out"
    record_stage(stage, data, out, tiny_model_path)
    ckpt = save_checkpoint(out, 1, {"step": 1}, save_models=_copy_model(tiny_model_path))
    (ckpt / "policy_trainable.safetensors").write_bytes(b"")
    plant(ckpt / name, marker)
    write_checksums(ckpt)
    rc, err = run_cli(stage_argv(stage, data, out, tiny_model_path), capsys)
    assert not marker.exists()
    what = "not readable JSON" if name.endswith(".json") else "not a readable safetensors file"
    assert rc == 2 and f"step-1/{name}: {what}" in err, err


@pytest.fixture
def reward_dir(tmp_path, tiny_model_path) -> Path:
    """A reward model in the earlier layout (causal LM + reward_head.safetensors)."""
    from helpers import save_earlier_format

    return save_earlier_format(ScalarHeadModel(load_causal_lm(tiny_model_path)), tmp_path / "rm",
                               load_tokenizer(tiny_model_path))


def test_old_reward_head_is_refused_with_a_conversion_command(reward_dir, marker):
    head = load_reward_model(reward_dir).head.state_dict()
    (reward_dir / "reward_head.safetensors").unlink()
    plant(reward_dir / "reward_head.pt", marker)
    with pytest.raises(AmbientError, match="reward_head.pt: a reward head in the old pickle format") as e:
        load_reward_model(reward_dir)
    assert not marker.exists()
    # the command in the message converts a genuine old head (torch.load, weights_only=True)
    torch.save(head, reward_dir / "reward_head.pt")
    cmd = next(line.strip() for line in str(e.value).splitlines() if line.strip().startswith("python -c"))
    subprocess.run([sys.executable, *shlex.split(cmd)[1:]], check=True)
    assert torch.equal(load_reward_model(reward_dir).head.weight, head["weight"])


def test_payload_as_reward_head_is_refused(reward_dir, marker):
    plant(reward_dir / "reward_head.safetensors", marker)
    with pytest.raises(AmbientError, match="reward_head.safetensors: not a readable safetensors file"):
        load_reward_model(reward_dir)
    assert not marker.exists()


def test_payload_as_sequence_classification_weights_is_refused(tmp_path, tiny_model_path, marker):
    d = tmp_path / "rm-new"
    ScalarHeadModel(load_causal_lm(tiny_model_path)).save_pretrained(d, load_tokenizer(tiny_model_path))
    plant(d / "model.safetensors", marker)
    with pytest.raises(AmbientError, match="model.safetensors: not a readable safetensors file"):
        load_reward_model(d)
    assert not marker.exists()


def test_feature_cache_payloads_are_ignored_with_a_warning(tmp_path, marker, tiny_model_path, warnings_seen):
    fc = tmp_path / "fc"
    store = FeatureStore(fc, tiny_model_path)
    store.features["k"] = torch.arange(4.0)
    store.loglik["k:3"] = (-1.5, -0.25)
    store.save()
    assert FeatureStore(fc, tiny_model_path).loglik == {"k:3": (-1.5, -0.25)}  # the plain round trip
    old = store.features_path.with_name(store.features_path.name.replace(".features.safetensors", ".pt"))
    plant(old, marker)
    plant(store.features_path, marker)
    plant(store.loglik_path, marker)
    again = FeatureStore(fc, tiny_model_path)
    assert not marker.exists()
    assert again.features == {} and again.loglik == {}
    joined = "\n".join(warnings_seen)
    assert "old pickle format" in joined and "unreadable feature cache" in joined
    assert "unreadable log-likelihood cache" in joined
    again.features["j"] = torch.ones(2)
    again.save()  # the bad files are replaced
    assert set(FeatureStore(fc, tiny_model_path).features) == {"j"}


def test_rm_eval_with_a_planted_feature_cache(data, tmp_path, marker, capsys, warnings_seen):
    """The path the issue found: ``rm eval --feature-cache`` unpickled the cache."""
    fc, rm = tmp_path / "fc", tmp_path / "rm"
    assert main(["rm", "--data", str(data), "--model", "tiny-random", "--out", str(rm), "--train-layers", "0",
                 f"feature_cache={fc}", "max_steps=2", "eval_split=", "eval_steps=0"]) == 0
    files = sorted(fc.iterdir())
    assert [f.name.split(".", 1)[1] for f in files] == ["features.safetensors", "loglik.json"]
    for f in files:
        plant(f, marker)
    plant(files[0].with_name(files[0].name.split(".")[0] + ".pt"), marker)
    rc, err = run_cli(["rm", "eval", "--model", str(rm), "--data", str(data), "--feature-cache", str(fc),
                       "--loglik-model", "none", "--max-pairs", "4", "--out", str(tmp_path / "ev")], capsys)
    assert rc == 0, err
    assert not marker.exists()
    joined = "\n".join(warnings_seen)
    assert "unreadable feature cache" in joined and "unreadable log-likelihood cache" in joined
    assert "old pickle format" in joined
