"""Config loading: defaults <- YAML <- key=value, type coercion, unknown keys, docstrings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from ambient_rlhf.config import (
    ConfigError,
    check_documented,
    config_help,
    field_docs,
    load_config,
    overrides_to_dict,
    to_dict,
)


@dataclass
class Labels:
    min_score_ratio: float = 2.0
    """SHP: the chosen score must be at least this multiple of the rejected score."""
    max_pairs: int = 5
    """Pairs kept per thread."""


@dataclass
class Demo:
    name: str = "x"
    """A name."""
    lr: float = 1e-5
    """Learning rate."""
    lora: bool = False
    """Use LoRA."""
    algo: Literal["ppo", "rloo"] = "ppo"
    """Algorithm."""
    layers: Optional[int] = None
    """Layers to train; None = all."""
    sources: list[str] = field(default_factory=list)
    """Input paths."""
    labels: Labels = field(default_factory=Labels)
    """Label settings."""


def test_defaults_yaml_and_overrides_in_order(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("lr: 3.0e-4\nlabels:\n  max_pairs: 7\nname: fromyaml\n")
    cfg = load_config(Demo, y, ["name=cli", "labels.min_score_ratio=3"])
    assert cfg.name == "cli"  # CLI beats YAML
    assert cfg.lr == pytest.approx(3e-4)  # YAML beats default
    assert cfg.labels.max_pairs == 7  # nested from YAML
    assert cfg.labels.min_score_ratio == 3.0 and isinstance(cfg.labels.min_score_ratio, float)
    assert cfg.lora is False and cfg.algo == "ppo"


def test_coercion_of_cli_strings():
    cfg = load_config(Demo, None, ["lr=1e-3", "lora=true", "layers=4", "sources=a,b", "algo=rloo"])
    assert cfg.lr == 1e-3 and cfg.lora is True and cfg.layers == 4
    assert cfg.sources == ["a", "b"] and cfg.algo == "rloo"
    assert load_config(Demo, None, ["layers=none"]).layers is None


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("nmae=1", "unknown config key 'nmae'"),
        ("labels.min_ratio=3", "unknown config key 'labels.min_ratio'"),
        ("algo=dpo", "not one of"),
        ("lora=maybe", "expected true/false"),
        ("labels.max_pairs=2.5", "expected an integer"),
        ("novalue", "key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(Demo, None, [override])
    assert fragment in str(e.value)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        load_config(Demo, None, ["labels.oops=1"])
    assert "labels.min_score_ratio" in str(e.value) and "labels.max_pairs" in str(e.value)


def test_yaml_errors_name_file_and_line(tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text("lr: 1\nname: [unclosed\n")
    with pytest.raises(ConfigError) as e:
        load_config(Demo, y)
    assert "bad.yaml:" in str(e.value)
    with pytest.raises(ConfigError, match="not found"):
        load_config(Demo, tmp_path / "missing.yaml")


def test_field_docs_and_help():
    docs = field_docs(Demo)
    assert docs["lr"] == "Learning rate."
    assert check_documented(Demo) == []
    text = config_help(Demo)
    assert "labels.min_score_ratio = 2.0" in text and "SHP: the chosen score" in text

    @dataclass
    class Undocumented:
        a: int = 1

    assert check_documented(Undocumented) == ["Undocumented.a"]


def test_overrides_to_dict_nesting_and_round_trip():
    assert overrides_to_dict(["a.b.c=1", "a.d=x", "e=[1, 2]"]) == {"a": {"b": {"c": 1}, "d": "x"}, "e": [1, 2]}
    cfg = load_config(Demo, None, ["labels.max_pairs=9"])
    again = load_config(Demo, None, None, base=to_dict(cfg))
    assert again == cfg
