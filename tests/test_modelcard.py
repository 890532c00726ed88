"""Model cards (README.md of model directories), written from the directory's own files."""

import json

from ambient_rlhf.io import write_manifest
from ambient_rlhf.modelcard import model_card


def test_sft_card_has_the_command_inputs_and_three_lines_to_load(tmp_path, monkeypatch):
    out = tmp_path / "sft"
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"stage": "data", "community": "AskFoo"}))
    monkeypatch.setattr("sys.argv", ["/x/ambient_rlhf/cli/__main__.py", "sft", "--data", str(data), "--out", str(out)])
    write_manifest(out, "sft", {"data": str(data), "out": str(out), "steps": 16}, inputs=[data],
                   counts={"train_examples": 120}, results={"eval_last": {"loss": 2.5}})
    card = (out / "README.md").read_text()
    assert f"ambient sft --data {data} --out {out}" in card
    assert f"input `{data}` (community AskFoo)" in card and "train_examples 120" in card and '"steps": 16' in card
    assert f"AutoModelForCausalLM.from_pretrained('{out}')" in card and "eval_last" in card


def test_reward_card_states_the_eval_headline(tmp_path):
    out = tmp_path / "rm"
    out.mkdir()
    (out / "reward_config.json").write_text(json.dumps({
        "kind": "scalar", "objective": "pairwise", "template": "chat", "max_prompt_tokens": 96,
        "max_response_tokens": 96, "community_prefix": True, "communities": ["AskAcademia"], "train_half": "a"}))
    ev = {"split": "test", "n_pairs": 1220, "n_threads": 59,
          "accuracy": {"value": 0.5931, "ci_low": 0.5112, "ci_high": 0.6634, "n": 59},
          "baselines": {"longer_wins": {"value": 0.656, "ci_low": 0.621, "ci_high": 0.692}},
          "beyond_length": {"gain": {"log_loss": {"value": -0.007, "ci_low": -0.019, "ci_high": 0.001}},
                            "verdict": "none"}}
    (out / "eval.json").write_text(json.dumps(ev))
    write_manifest(out, "rm", {"out": str(out)}, counts={"train_units": 800})
    card = model_card(out)
    assert "pairwise accuracy: 0.593 [0.511, 0.663]; longer answer wins: 0.656 [0.621, 0.692]" in card
    assert "verdict `none`" in card and "communities: AskAcademia; half `a`" in card
    assert "AutoModelForSequenceClassification" in card and "prefixed with `[community] `" in card
    assert (out / "README.md").read_text() == card


def test_data_directories_get_no_card(tmp_path):
    write_manifest(tmp_path / "d", "data", {})
    assert not (tmp_path / "d" / "README.md").exists()
