"""Every preset loads: the ``ambient run`` presets (package data, ``ambient_rlhf/presets``)
into RunConfig (and plan), the accelerate config in configs/ through accelerate's own
loader; the demo preset is the one source of the run's defaults; the run refuses keys it
sets itself and writes the resolved config."""

from __future__ import annotations

from pathlib import Path

import pytest

from ambient_rlhf.config import check_documented, to_dict

from ambient_rlhf import AmbientError
from ambient_rlhf.run import PRESETS as PRESET_DIR

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ACCELERATE = {"accelerate-deepspeed-zero2.yaml"}
PRESETS = sorted(p.name for p in PRESET_DIR.glob("*.yaml"))


def test_presets_exist_once():
    assert {"demo.yaml", "askacademia.yaml", "gpu-smollm2.yaml", "multi-gpu-deepspeed.yaml"} <= set(PRESETS)
    assert all((CONFIGS / a).is_file() for a in ACCELERATE)
    assert not list(PRESET_DIR.glob("*.yml")), "name presets *.yaml so this test finds them"
    # no second copy in configs/: it holds the accelerate config only
    assert {p.name for p in CONFIGS.glob("*.y*ml")} == ACCELERATE
    # shipped as package data
    import tomllib

    pyproject = tomllib.loads((CONFIGS.parent / "pyproject.toml").read_text())
    assert "presets/*.yaml" in pyproject["tool"]["setuptools"]["package-data"]["ambient_rlhf"]


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_and_plans(name, warnings_seen):
    from ambient_rlhf.run import load_run_config, plan

    cfg = load_run_config(PRESET_DIR / name)
    stages = [s.name for s in plan(cfg)]
    assert stages[-1] == "report" and "rl" in stages and "eval" in stages
    assert ("simulate" in stages) == (not cfg.sources)
    # the reward stages' settings pass the rm stage's own checks (e.g. what pooling needs)
    from ambient_rlhf.train.reward.config import _validate as check_rm

    for s in plan(cfg):
        if s.kind == "rm":
            check_rm(s.config)
    # by name, and by the old path under configs/, it is the same preset
    stem = name[: -len(".yaml")]
    for alias in (stem, name, f"configs/{name}"):
        assert to_dict(load_run_config(alias)) == to_dict(cfg)
    # the header comment names the command that runs this preset
    header = [line for line in (PRESET_DIR / name).read_text().splitlines() if line.startswith("#")]
    assert any(f"run {stem}" in line and ("ambient run" in line or "ambient_rlhf.cli run" in line) for line in header)


def test_demo_is_the_default_and_its_only_source():
    import yaml

    from ambient_rlhf.run import RunConfig, load_run_config

    assert to_dict(load_run_config("demo")) == to_dict(load_run_config(None)) == to_dict(RunConfig())
    # every value the demo file writes is the run's default: change the file, the default follows
    demo = yaml.safe_load((PRESET_DIR / "demo.yaml").read_text())
    default = to_dict(RunConfig())

    def check(d, ref, where):
        for k, v in d.items():
            if isinstance(v, dict):
                check(v, ref[k], f"{where}{k}.")
            else:
                assert ref[k] == v, f"{where}{k}"

    check(demo, default, "")
    # run.py holds no copy of the demo's numbers
    import ambient_rlhf.run as run

    assert not [n for n in vars(run) if n.startswith("DEMO_")]


def test_unknown_config_names_the_presets(tmp_path):
    from ambient_rlhf.run import load_run_config

    with pytest.raises(AmbientError, match=r"nope.yaml: no such file and no such preset.*askacademia, askacademia-gpu, demo"):
        load_run_config("nope.yaml")
    mine = tmp_path / "demo.yaml"  # a file of the user's own wins over the preset of that name
    mine.write_text("rl: {max_steps: 3}\n")
    assert load_run_config(mine).rl.max_steps == 3


@pytest.mark.parametrize("where,key", [("cli", "sft.condition=tier"), ("cli", "sft.model=x"), ("file", "rm.train_half"),
                                       ("cli", "eval.goal=good"), ("cli", "rl.reward=token-count:1"),
                                       ("file", "sft.resume"), ("cli", "dpo.model=x"), ("file", "dpo.data")])
def test_keys_the_run_sets_are_refused(tmp_path, where, key):
    from ambient_rlhf.run import load_run_config

    name = key.split("=")[0]
    sec, k = name.split(".")
    if where == "cli":
        with pytest.raises(AmbientError, match=rf"run: the command line sets {sec}\.{k} \(.*remove it"):
            load_run_config(None, ["rl.max_steps=3", key])
    else:
        f = tmp_path / "mine.yaml"
        f.write_text(f"{sec}:\n  {k}: b\n  learning_rate: 0.1\n" if k == "train_half" else f"{sec}:\n  {k}: true\n")
        with pytest.raises(AmbientError, match=rf"mine.yaml sets {sec}\.{k} \("):
            load_run_config(f)
    # the seeds the run derives from a user's value are honoured: proxy = rm.seed, gold = rm.seed + 1
    from ambient_rlhf.run import plan

    stages = {s.name: s.config for s in plan(load_run_config(None, ["rm.seed=7", f"out={tmp_path}"]))}
    assert (stages["rm-proxy"].seed, stages["rm-gold"].seed) == (7, 8)


@pytest.mark.parametrize("method,expected", [
    ("rl", ["rl", "eval"]), ("dpo", ["dpo", "eval-dpo"]), ("both", ["rl", "eval", "dpo", "eval-dpo"])])
def test_method_places_dpo_beside_rl(tmp_path, method, expected):
    """``method`` picks the policy stages; DPO starts from sft/ on data/ and its evaluation
    is RL's with the policy swapped: same prompts, reference and judges."""
    from ambient_rlhf.run import RUNNERS, load_run_config, plan, run_pipeline

    cfg = load_run_config(None, [f"out={tmp_path}", f"method={method}", "dpo.beta=0.2"])
    stages = {s.name: s for s in plan(cfg)}
    policy = [n for n in stages if n in ("rl", "eval", "dpo", "eval-dpo")]
    assert policy == expected
    if "dpo" in stages:
        d = stages["dpo"]
        assert (d.kind, d.deps, d.resumable) == ("dpo", ["data", "sft"], True)
        assert (d.config.data, d.config.model, d.config.out) == (str(tmp_path / "data"), str(tmp_path / "sft"),
                                                                 str(tmp_path / "dpo"))
        assert d.config.beta == 0.2 and d.config.overwrite and not d.config.resume
        # DPO learns from the proxy's half: the gold judge's pairs stay unseen
        assert d.config.train_half == "a" == stages["rm-proxy"].config.train_half != stages["rm-gold"].config.train_half
        e = stages["eval-dpo"]
        assert e.config.policy == str(tmp_path / "dpo") and "dpo" in e.deps
        assert (e.config.reference, e.config.judge) == (str(tmp_path / "sft"), str(tmp_path / "rm-gold"))
        if "eval" in stages:  # the same evaluation but for the policy and the directory
            from dataclasses import replace

            assert replace(e.config, policy="p", out="o") == replace(stages["eval"].config, policy="p", out="o")
    calls: list[str] = []

    def stub(c, resume, out):
        calls.append(Path(out).name)
        from ambient_rlhf.io import write_manifest

        write_manifest(out, "stub", {})

    run_pipeline(cfg, runners={k: stub for k in RUNNERS})
    assert [c for c in calls if c in ("rl", "eval", "dpo", "eval-dpo")] == expected
    assert "dpo" in RUNNERS


def test_resolved_config_is_written_and_runs_again(tmp_path):
    from ambient_rlhf.io import write_manifest
    from ambient_rlhf.run import RESOLVED_FILE, RUNNERS, load_run_config, run_pipeline

    cfg = load_run_config("askacademia", [f"out={tmp_path / 'run'}", "sources=[a.ndjson]", "rl.max_steps=3"])
    run_pipeline(cfg, runners={k: (lambda c, r, o: write_manifest(o, "x")) for k in RUNNERS})  # no training
    path = tmp_path / "run" / RESOLVED_FILE
    text = path.read_text()
    assert text.startswith("# written by `ambient run`") and "max_steps: 3" in text
    again = load_run_config(path)  # no key the run sets is in it, so it loads as a user's config
    assert to_dict(again) == to_dict(cfg)


def test_run_config_documented():
    from ambient_rlhf.run import RunConfig, stage_config_types

    stage_config_types()
    assert check_documented(RunConfig) == []


def test_askacademia_uses_the_real_dump():
    from ambient_rlhf.run import load_run_config

    cfg = load_run_config("askacademia", ["data.sources=[x/y]"])
    assert cfg.sources == ["x/y"]  # data.sources is the documented synonym of sources


def test_multi_gpu_preset_and_its_accelerate_config():
    from accelerate.commands.config.config_args import load_config_from_file

    from ambient_rlhf.run import load_run_config

    cfg = load_run_config("multi-gpu-deepspeed")
    assert cfg.model == "gpt2-xl" and cfg.sft.template == "plain"
    acc = load_config_from_file(str(CONFIGS / "accelerate-deepspeed-zero2.yaml"))
    assert str(acc.distributed_type).endswith("DEEPSPEED") and acc.num_processes == 4
    assert acc.deepspeed_config["zero_stage"] == 2
    assert "configs/accelerate-deepspeed-zero2.yaml" in (PRESET_DIR / "multi-gpu-deepspeed.yaml").read_text()


def test_extends_layers_a_yaml_on_a_preset_or_a_file(tmp_path):
    from ambient_rlhf.run import load_run_config

    # the askacademia preset is the reddit recipe with AskAcademia's own values on top
    aa, rd = load_run_config("askacademia"), load_run_config("reddit")
    assert rd.rm.weight_decay_grid and not aa.rm.weight_decay_grid and aa.rm.weight_decay == 10.0
    assert (aa.rm.pooling, aa.rm.pairs, aa.sft.max_steps) == (rd.rm.pooling, rd.rm.pairs, rd.sft.max_steps)
    assert aa.data.filters.subreddit == "AskAcademia" and rd.data.filters.subreddit is None
    # a user's file extends a preset by name, then another file next to it; sections merge key by key
    (tmp_path / "mine.yaml").write_text("extends: reddit\nsources: [d]\nrl: {max_steps: 3}\n")
    (tmp_path / "more.yaml").write_text("extends: mine.yaml\nrl: {batch_size: 4}\n")
    cfg = load_run_config(tmp_path / "more.yaml")
    assert (cfg.rl.max_steps, cfg.rl.batch_size, cfg.rl.rloo_k, cfg.sources) == (3, 4, rd.rl.rloo_k, ["d"])
    assert cfg.rm.weight_decay_grid == rd.rm.weight_decay_grid
    # a cycle and a missing base are errors that name the file
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(AmbientError, match="cycle"):
        load_run_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: nowhere\n")
    with pytest.raises(AmbientError, match="nowhere: no such file and no such preset"):
        load_run_config(tmp_path / "c.yaml")


def test_rm_model_gives_the_reward_models_another_base():
    from ambient_rlhf.run import load_run_config, plan

    rms = {s.name: s for s in plan(load_run_config("reddit", ["rm_model=gemma3-270m"])) if s.kind == "rm"}
    assert set(rms) == {"rm-proxy", "rm-gold"}
    assert all(s.config.model == "gemma3-270m" and s.deps == ["data"] for s in rms.values())
    default = [s for s in plan(load_run_config("reddit")) if s.kind == "rm"]
    assert all(s.config.model.endswith("sft") and "sft" in s.deps for s in default)  # rm_init: sft


def test_reddit_gemma_preset_is_the_measured_reward_recipe():
    """The rm settings of docs/reward.md's all-pairs Gemma row (written out here by hand),
    on each half, everything else the reddit preset's."""
    from ambient_rlhf.run import load_run_config, plan

    cfg, base = load_run_config("reddit-gemma"), load_run_config("reddit")
    rms = [s.config for s in plan(cfg) if s.kind == "rm"]
    assert [c.train_half for c in rms] == ["a", "b"]
    for c in rms:
        assert (c.model, c.pooling, c.backbone_layers, c.train_layers, c.pairs) == ("gemma3-270m", "mean", 12, 0, "all")
        assert c.covariates == ["delay", "order", "length"] and c.standardize_features
        assert (c.head_fit, c.weight_decay_grid, c.max_train_units) == ("lbfgs", [0.03, 0.1, 0.3, 1.0], 0)
        assert (c.max_prompt_tokens, c.max_response_tokens) == (64, 64)
    assert to_dict(cfg.sft) == to_dict(base.sft) and to_dict(cfg.rl) == to_dict(base.rl)
    assert cfg.model == base.model == "default" and cfg.out == "runs/reddit-gemma"
