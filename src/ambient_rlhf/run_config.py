"""The configuration of ``ambient run``: presets, defaults, the keys the run sets.

* **Presets** ship with the package (``ambient_rlhf/presets/*.yaml``, package data) and are
  named on the command line (``ambient run askacademia``); a YAML path works too.
* **One source for the demo's numbers**: every default of :class:`RunConfig` is read from
  the ``demo`` preset, and every other config is merged on top of it.
* **No silent replacement**: the keys that connect the stages (:data:`RUN_SET`) are set by
  :func:`ambient_rlhf.run.plan`; a user's value for one of them is an error naming it.
* **The resolved config** is written next to the outputs (:func:`resolved_yaml`,
  ``RUN_DIR/config.resolved.yaml``) and runs again as a CONFIG.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from ambient_rlhf import AmbientError
from ambient_rlhf.config import config_help, to_dict
from ambient_rlhf.data.feedback import FeedbackConfig
from ambient_rlhf.data.simulate import SimulateConfig


# ---- the stage config classes, imported on first use ---------------------------------------
def stage_config_types() -> dict[str, type]:
    """Import the stage config classes (torch and transformers come with them) and make
    them resolvable for :class:`RunConfig`'s annotations."""
    from ambient_rlhf.data.build import DataConfig
    from ambient_rlhf.train.dpo import DPOConfig
    from ambient_rlhf.eval.policy_eval import EvalConfig
    from ambient_rlhf.train.reward import RewardConfig
    from ambient_rlhf.train.rl import RLConfig
    from ambient_rlhf.train.sft import SFTConfig

    types_ = {"DataConfig": DataConfig, "SFTConfig": SFTConfig, "RewardConfig": RewardConfig,
              "RLConfig": RLConfig, "DPOConfig": DPOConfig, "EvalConfig": EvalConfig}
    globals().update(types_)
    return types_


# ---- presets and the run configuration -----------------------------------------------------
PRESETS = Path(__file__).resolve().parent / "presets"
"""The presets ``ambient run`` ships (package data), one YAML each: ``ambient run NAME``."""
DEMO = "demo"
"""The preset whose values are :class:`RunConfig`'s defaults: its YAML is the only place
the demo's numbers are written (a simulated community answered by SmolLM2, sized for
~15 minutes on a 2-core CPU; the file's comments give the measured reasons)."""


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def find_preset(config: str | Path) -> Path:
    """The YAML file of a CONFIG argument: an existing file, else a shipped preset by
    name (``askacademia``, ``askacademia.yaml``, or its old place ``configs/askacademia.yaml``)."""
    p = Path(config)
    if p.is_file():
        return p
    stem = p.name[: -len(".yaml")] if p.name.endswith(".yaml") else p.name
    if (PRESETS / f"{stem}.yaml").is_file() and str(p.parent) in (".", "configs"):
        return PRESETS / f"{stem}.yaml"
    raise AmbientError(f"{config}: no such file and no such preset; give a YAML file or one of the presets: "
                       f"{', '.join(preset_names())} (e.g. `ambient run askacademia`)")


@functools.lru_cache(maxsize=1)
def _demo_values() -> dict[str, Any]:
    from ambient_rlhf.config import read_yaml

    return read_yaml(PRESETS / f"{DEMO}.yaml")


def _demo(key: str, cls_name: str | None = None, fallback: Any = None) -> Callable[[], Any]:
    """default_factory: the demo preset's value of ``key`` (a section is built through
    :func:`~ambient_rlhf.config.from_dict`, so it is validated like a user's)."""
    def make() -> Any:
        from ambient_rlhf.config import from_dict

        value = copy.deepcopy(_demo_values().get(key, fallback))
        if cls_name is None:
            return value
        light = {"SimulateConfig": SimulateConfig, "FeedbackConfig": FeedbackConfig}
        cls = light[cls_name] if cls_name in light else stage_config_types()[cls_name]
        return from_dict(cls, value or {}, prefix=key + ".")
    return make


@dataclass
class RunConfig:
    out: str = field(default_factory=_demo("out"))
    """Run directory; every stage writes a subdirectory of it."""
    model: str = field(default_factory=_demo("model"))
    """Base model of the run (SFT starts from it; the simulated community's answers come
    from ``simulate.model``): ``default`` (SmolLM2-135M-Instruct, offline),
    ``tiny-random`` (smoke tests), a model directory or a hub id."""
    sources: list[str] = field(default_factory=_demo("sources", fallback=[]))
    """Data to build from: dump files, directories or tables (``ambient data build``'s
    SOURCE arguments). Empty = simulate a community (``simulate.*``) and build from it.
    ``data.sources=...`` is accepted as a synonym."""
    goal_model: bool = field(default_factory=_demo("goal_model"))
    """Also train the tier-conditioned SFT model and evaluate it with ``<|tier:good|>``
    against plain SFT on the same judge (goal tokens vs RL)."""
    method: Literal["rl", "dpo", "both"] = field(default_factory=_demo("method", fallback="rl"))
    """How the policy learns from the votes: ``rl`` (reward model + ``rl``, evaluated in
    ``eval/``), ``dpo`` (straight from the pairs, ``dpo/``, evaluated in ``eval-dpo/``) or
    ``both``, side by side under the same judge in the report."""
    rm_init: Literal["sft", "base"] = field(default_factory=_demo("rm_init"))
    """Reward models start from the ``sft`` model (InstructGPT/Stiennon et al.: the
    reward model shares the policy's view of the text) or from the ``base`` model."""
    rm_model: str = field(default_factory=_demo("rm_model", fallback=""))
    """Another base model for the reward models (e.g. ``gemma3-270m``), instead of
    ``rm_init``'s; RL reads a reward model over another vocabulary through the decoded text
    (docs/rl.md, "Rewards").  Empty: ``rm_init`` decides."""
    simulate: SimulateConfig = field(default_factory=_demo("simulate", "SimulateConfig"))
    """The simulated community (used when ``sources`` is empty); see ``ambient data simulate --help-config``."""
    data: DataConfig = field(default_factory=_demo("data", "DataConfig"))  # noqa: F821
    """``ambient data build`` settings (the sources come from ``sources``)."""
    sft: SFTConfig = field(default_factory=_demo("sft", "SFTConfig"))  # noqa: F821
    """Behaviour cloning. The run sets ``data``, ``model`` (from the run's ``model``),
    ``out``, ``resume``, ``overwrite`` and ``condition`` (``none`` for ``sft/``, ``tier``
    for ``sft-tier/``); giving one of them is an error."""
    rm: RewardConfig = field(default_factory=_demo("rm", "RewardConfig"))  # noqa: F821
    """Reward models: proxy and gold share these settings. The run sets ``train_half``
    (``a`` for the proxy, ``b`` for the gold model), ``data``, ``model``, ``out``,
    ``resume``, ``overwrite`` (giving one is an error); ``seed`` seeds the proxy and
    ``seed + 1`` the gold model, so the judge starts independently."""
    rl: RLConfig = field(default_factory=_demo("rl", "RLConfig"))  # noqa: F821
    """Policy optimisation. The run sets ``policy``, ``reward``, ``data``, ``out``,
    ``resume``, ``overwrite`` (giving one is an error)."""
    dpo: DPOConfig = field(default_factory=_demo("dpo", "DPOConfig"))  # noqa: F821
    """Direct preference optimisation (``method`` dpo or both), from the run's sft/ model.
    The run sets ``data``, ``model``, ``out``, ``resume``, ``overwrite`` (giving one is an
    error)."""
    eval: EvalConfig = field(default_factory=_demo("eval", "EvalConfig"))  # noqa: F821
    """Policy evaluation (every evaluation). The run sets the model paths, ``data``,
    ``out``, ``overwrite``, ``goal`` (none for ``eval/``, ``good`` for ``eval-goal/`` and
    ``eval-steer/``) and ``reference_goal`` (``bad`` for ``eval-steer/``, the steering
    test); giving one is an error."""
    rounds: int = field(default_factory=_demo("rounds", fallback=1))
    """Rounds of iterated RLHF (``ambient_rlhf.rounds``): after round 1 (rm-proxy, rl,
    eval), each round r collects feedback on the last policy's answers (``feedback.*``),
    retrains the proxy on the run's data plus that feedback, runs RL from the last policy
    with KL to sft/, and evaluates it (feedback-r, mix-r, rm-proxy-r, rl-r, eval-r)."""
    feedback: FeedbackConfig = field(default_factory=_demo("feedback", "FeedbackConfig"))
    """Rounds 2..N: where new preferences over the policy's answers come from and how
    they join the reward model's data (``rounds`` > 1 only)."""


RUN_SET = {
    "sft": {"data": "the run's data/", "model": "the run's `model`: set model=... instead",
            "out": "the run's sft/ and sft-tier/", "condition": "none for sft/, tier for sft-tier/ (goal_model=true)",
            "resume": "the run resumes an interrupted stage by itself", "overwrite": "the run decides"},
    "rm": {"data": "the run's data/", "model": "the sft/ model or the run's `model` (rm_init)",
           "out": "the run's rm-proxy/ and rm-gold/", "train_half": "a for rm-proxy, b for rm-gold",
           "resume": "the run resumes an interrupted stage by itself", "overwrite": "the run decides"},
    "rl": {"policy": "the run's sft/", "reward": "the run's rm-proxy/", "data": "the run's data/", "out": "the run's rl/",
           "reference": "the run's sft/ (later rounds start from the last policy)",
           "resume": "the run resumes an interrupted stage by itself", "overwrite": "the run decides"},
    "dpo": {"data": "the run's data/", "model": "the run's sft/", "out": "the run's dpo/",
            "train_half": "a, the proxy's half (the gold judge learns from b)",
            "resume": "the run resumes an interrupted stage by itself", "overwrite": "the run decides"},
    "eval": {"policy": "rl/, dpo/ or sft-tier/", "reference": "the run's sft/ (sft-tier/ for eval-steer/)",
             "judge": "the run's rm-gold/", "proxy": "the run's rm-proxy/", "data": "the run's data/",
             "out": "the run's eval/, eval-dpo/, eval-goal/ and eval-steer/",
             "goal": "none for eval/ and eval-dpo/, good for eval-goal/ and eval-steer/",
             "reference_goal": "bad for eval-steer/, else none", "overwrite": "the run decides"},
}
"""Stage keys that :func:`plan` sets, with what it sets them to.  A user's value for one
of them is refused (never silently replaced)."""


def _refuse_run_set(given: dict[str, Any], where: str) -> None:
    bad = [f"{sec}.{k} ({why})" for sec, keys in RUN_SET.items() if isinstance(given.get(sec), dict)
           for k, why in keys.items() if k in given[sec]]
    if bad:
        raise AmbientError(f"run: {where} sets {'; '.join(bad)}: the run sets "
                           f"{'this key' if len(bad) == 1 else 'these keys'} itself; remove "
                           f"{'it' if len(bad) == 1 else 'them'} (a single stage runs with `ambient <stage>`)")


def load_run_config(config_file: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """The demo preset <- YAML (a path or a preset name) <- ``key=value``.  Sections start
    from the demo's, so ``sft.learning_rate=1e-4`` changes the learning rate and keeps the demo's
    schedule.  A key the run sets itself (:data:`RUN_SET`) is refused."""
    from ambient_rlhf.config import deep_merge, from_dict, overrides_to_dict, upgrade_keys

    stage_config_types()
    data = to_dict(RunConfig())
    if config_file is not None:
        data = deep_merge(data, _read_run_yaml(find_preset(config_file)))
    if overrides:
        given = upgrade_keys(RunConfig, overrides_to_dict(overrides))
        _refuse_run_set(given, "the command line")
        data = deep_merge(data, given)
    sec = data.get("data")
    if isinstance(sec, dict) and "sources" in sec and "sources" not in _field_names(DataConfig):  # noqa: F821
        data = dict(data, data={k: v for k, v in sec.items() if k != "sources"}, sources=sec["sources"])
    return from_dict(RunConfig, data)


def _read_run_yaml(path: Path, chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """A run YAML's values, on top of the file it ``extends`` (a preset name, or a path
    relative to this file), recursively: ``extends: reddit`` then only what differs."""
    from ambient_rlhf.config import deep_merge, read_yaml, upgrade_keys

    raw = dict(read_yaml(path))
    base = raw.pop("extends", None)
    given = upgrade_keys(RunConfig, raw)  # old key names -> new, before merging
    _refuse_run_set(given, str(path))
    if base is None:
        return given
    if not isinstance(base, str) or not base:
        raise AmbientError(f"{path}: extends must name one preset or YAML file, not {base!r}")
    here = str(path.resolve())
    if here in chain:
        raise AmbientError(f"{path}: extends forms a cycle ({' -> '.join(chain + (here,))})")
    near = path.parent / base
    parent = near if near.is_file() else find_preset(base)
    return deep_merge(_read_run_yaml(parent, chain + (here,)), given)


RESOLVED_FILE = "config.resolved.yaml"
"""Written into the run directory: every key of the run's config, as resolved."""


def resolved_yaml(cfg: dict[str, Any]) -> str:
    """The run's config (``to_dict(RunConfig)``) as YAML, without the keys the run sets
    itself, so that ``ambient run RUN_DIR/config.resolved.yaml`` runs it again."""
    import yaml

    body = {k: ({kk: vv for kk, vv in v.items() if kk not in RUN_SET.get(k, {})} if isinstance(v, dict) else v)
            for k, v in cfg.items()}
    return ("# written by `ambient run`: the resolved config of this run (the stages' own settings, with the\n"
            "# paths that connect them, are in each stage's manifest.json). Run it again with:\n"
            f"#   ambient run {Path(str(cfg.get('out', '.'))) / RESOLVED_FILE}\n"
            + yaml.safe_dump(body, sort_keys=False, default_flow_style=False))


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


# ---- help --------------------------------------------------------------------------------
def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix[:-1]: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}."))
    return out


def run_config_help() -> str:
    """Every key with its meaning, then the values where the run's defaults (the demo)
    differ from the stages' own defaults."""
    types_ = stage_config_types()
    text = config_help(RunConfig)
    run_defaults = _flatten(to_dict(RunConfig()))
    stage_defaults: dict[str, Any] = {}
    for name, cls in (("simulate", SimulateConfig), ("data", types_["DataConfig"]), ("sft", types_["SFTConfig"]),
                      ("rm", types_["RewardConfig"]), ("rl", types_["RLConfig"]), ("dpo", types_["DPOConfig"]),
                      ("eval", types_["EvalConfig"]), ("feedback", FeedbackConfig)):
        stage_defaults.update(_flatten(to_dict(cls()), f"{name}."))
    diff = [f"  {k} = {v!r}" for k, v in run_defaults.items() if k in stage_defaults and stage_defaults[k] != v]
    return (text + f"\n\nDefaults of `ambient run` (the demo, {PRESETS / (DEMO + '.yaml')}) that differ from the "
            "stage defaults above:\n" + "\n".join(diff))
