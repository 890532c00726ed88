"""``ambient export trl``: the pairs and responses of a data directory as TRL datasets.

The expected rows are read from the data directory's own parquet files with pandas; TRL
1.16's ``RewardTrainer`` and ``DPOTrainer`` then train a step on the exported files (TRL is
in the ``test`` extra; the two training tests skip with a message where it is absent)."""

import json

import pandas as pd
import pytest
from helpers import make_data_dir

from ambient_rlhf.cli import main


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = make_data_dir(root / "askfoo", n_threads=12, k=3)
    # a damaged row: an empty rejected answer is skipped and counted, not exported
    pairs = pd.read_parquet(data / "pairs.parquet")
    pairs.loc[0, "rejected"] = "  "
    pairs.to_parquet(data / "pairs.parquet")
    assert main(["export", "trl", str(data), "--out", str(root / "trl")]) == 0
    return data, root / "trl"


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_pair_and_response_lands_in_its_split_file(exported):
    data, out = exported
    pairs = pd.read_parquet(data / "pairs.parquet").iloc[1:]  # row 0 was damaged above
    responses = pd.read_parquet(data / "responses.parquet")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["skipped_pairs"] == 1 and manifest["counts"]["skipped_responses"] == 0
    for split in ("train", "valid", "test"):
        want = pairs[pairs.split == split]
        got = _jsonl(out / "preference" / f"{split}.jsonl")
        assert len(got) == len(want) > 0
        assert manifest["counts"]["pairs_per_split"][split] == len(want)
        r, g = want.iloc[0], got[0]
        assert g["prompt"] == [{"role": "user", "content": r.prompt}]
        assert g["chosen"] == [{"role": "assistant", "content": r.chosen}]
        assert g["rejected"] == [{"role": "assistant", "content": r.rejected}]
        assert (g["chosen_score"], g["rejected_score"], g["community"]) == (r.chosen_score, r.rejected_score, "askfoo")
        rows = _jsonl(out / "prompt_completion" / f"{split}.jsonl")
        want_r = responses[responses.split == split]
        assert len(rows) == len(want_r)
        assert [x["completion"][0]["content"] for x in rows] == list(want_r.response)
        assert [x["tier"] for x in rows] == list(want_r.tier)
        # reply_sentiment is null for responses without replies (NaN in parquet)
        assert [x["reply_sentiment"] is None for x in rows] == list(want_r.reply_sentiment.isna())


def test_standard_format_and_refusals(exported, tmp_path, capsys):
    data, out = exported
    assert main(["export", "trl", str(data), "--out", str(tmp_path / "s"), "--format", "standard"]) == 0
    row = _jsonl(tmp_path / "s" / "preference" / "train.jsonl")[0]
    first = pd.read_parquet(data / "pairs.parquet").query("split == 'train'").iloc[0]
    assert (row["prompt"], row["chosen"]) == (first.prompt, first.chosen)
    assert main(["export", "trl", str(data), "--out", str(out)]) == 2  # exists, no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", "trl", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "pairs.parquet: missing" in capsys.readouterr().err


def test_datasets_reads_the_splits(exported):
    from datasets import load_dataset

    _, out = exported
    ds = load_dataset(str(out / "preference"))
    assert set(ds) == {"train", "validation", "test"}
    assert len(ds["train"]) == len(_jsonl(out / "preference" / "train.jsonl"))
    sft = load_dataset(str(out / "prompt_completion"))["train"].filter(lambda r: r["tier"] == "good")
    assert len(sft) > 0 and {"prompt", "completion"} <= set(sft.column_names)


def _trl_args(trl, cls, tmp_path, **kw):
    return cls(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1, report_to=[], use_cpu=True,
               bf16=False, logging_steps=1, save_strategy="no", learning_rate=1e-3, **kw)


def test_trl_reward_trainer_trains_on_the_export(exported, tiny_model_path, tmp_path):
    trl = pytest.importorskip("trl", reason="TRL is not installed (the `test` extra): pip install 'trl>=1.16'")
    import math

    from datasets import load_dataset
    from transformers import AutoTokenizer

    _, out = exported
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    ds = load_dataset(str(out / "preference"))["train"]
    trainer = trl.RewardTrainer(model=tiny_model_path, args=_trl_args(trl, trl.RewardConfig, tmp_path, max_length=128),
                                train_dataset=ds, processing_class=tok)
    # TRL rendered the messages with the chat template: the chosen answer sits in an assistant turn
    text = tok.decode(trainer.train_dataset[0]["chosen_ids"])
    assert f"<|im_start|>assistant\n{ds[0]['chosen'][0]['content']}<|im_end|>" in text
    before = trainer.model.score.weight.detach().clone()
    result = trainer.train()
    assert result.global_step == 1 and math.isfinite(result.training_loss)
    assert not trainer.model.score.weight.detach().equal(before)


def test_trl_dpo_trainer_trains_on_the_export(exported, tiny_model_path, tmp_path):
    """At the first step the policy is its reference, so each pair's DPO loss is
    -log sigmoid(beta * 0) = log 2."""
    trl = pytest.importorskip("trl", reason="TRL is not installed (the `test` extra): pip install 'trl>=1.16'")
    import math

    from datasets import load_dataset
    from transformers import AutoTokenizer

    _, out = exported
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    ds = load_dataset(str(out / "preference"))["train"]
    trainer = trl.DPOTrainer(model=tiny_model_path, args=_trl_args(trl, trl.DPOConfig, tmp_path, max_length=128),
                             train_dataset=ds, processing_class=tok)
    trainer.train()
    first = [h for h in trainer.state.log_history if "loss" in h][0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)
