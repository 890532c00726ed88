"""Every YAML in configs/ loads: the ``ambient run`` presets into RunConfig (and plan),
the accelerate config through accelerate's own loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from ambient_rlhf.config import check_documented, to_dict

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ACCELERATE = {"accelerate-deepspeed-zero2.yaml"}
PRESETS = sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name not in ACCELERATE)


def test_presets_exist():
    assert {"demo.yaml", "askacademia.yaml", "gpu-smollm2.yaml", "multi-gpu-deepspeed.yaml"} <= set(PRESETS)
    assert all((CONFIGS / a).is_file() for a in ACCELERATE)
    assert not list(CONFIGS.glob("*.yml")), "name presets *.yaml so this test finds them"


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_and_plans(name):
    from ambient_rlhf.run import load_run_config, plan

    cfg = load_run_config(CONFIGS / name)
    stages = [s.name for s in plan(cfg)]
    assert stages[-1] == "report" and "rl" in stages and "eval" in stages
    assert ("simulate" in stages) == (not cfg.sources)
    # the header comment names the command that runs this preset
    header = [line for line in (CONFIGS / name).read_text().splitlines() if line.startswith("#")]
    assert any(f"configs/{name}" in line and ("ambient run" in line or "ambient_rlhf.cli run" in line)
               for line in header)


def test_demo_is_the_default():
    from ambient_rlhf.run import load_run_config

    assert to_dict(load_run_config(CONFIGS / "demo.yaml")) == to_dict(load_run_config(None))


def test_run_config_documented():
    from ambient_rlhf.run import RunConfig, stage_config_types

    stage_config_types()
    assert check_documented(RunConfig) == []


def test_askacademia_uses_the_real_dump():
    from ambient_rlhf.run import load_run_config

    cfg = load_run_config(CONFIGS / "askacademia.yaml", ["data.sources=[x/y]"])
    assert cfg.sources == ["x/y"]  # data.sources is the documented synonym of sources


def test_multi_gpu_preset_and_its_accelerate_config():
    from accelerate.commands.config.config_args import load_config_from_file

    from ambient_rlhf.run import load_run_config

    cfg = load_run_config(CONFIGS / "multi-gpu-deepspeed.yaml")
    assert cfg.model == "gpt2-xl" and cfg.sft.template == "plain"
    acc = load_config_from_file(str(CONFIGS / "accelerate-deepspeed-zero2.yaml"))
    assert str(acc.distributed_type).endswith("DEEPSPEED") and acc.num_processes == 4
    assert acc.deepspeed_config["zero_stage"] == 2
    assert "accelerate-deepspeed-zero2.yaml" in (CONFIGS / "multi-gpu-deepspeed.yaml").read_text()
