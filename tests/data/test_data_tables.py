"""data/tables.py: reading a data directory's tables and its community name."""

import json

import pandas as pd
import pytest

from ambient_rlhf import AmbientError
from ambient_rlhf.data import schema
from ambient_rlhf.data.tables import community_name, read_table


def _responses(d, community):
    d.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"thread_id": ["t1", "t2", "t3"], "split": ["train", "test", "train"],
                  "community": community}).to_parquet(d / schema.RESPONSES_FILE)


def test_community_name_manifest_then_column_then_directory(tmp_path):
    # manifest wins over the column
    d = tmp_path / "withmanifest"
    _responses(d, ["b", "b", "b"])
    (d / "manifest.json").write_text(json.dumps({"community": "askacademia"}))
    assert community_name(d) == "askacademia"
    # no manifest community (empty string, or broken JSON): the most common value, b (2 of 3)
    d = tmp_path / "column"
    _responses(d, ["b", "a", "b"])
    (d / "manifest.json").write_text(json.dumps({"community": ""}))
    assert community_name(d) == "b"
    (d / "manifest.json").write_text("{not json")
    assert community_name(d) == "b"
    # neither: the directory's name
    assert community_name(tmp_path / "nothing-here") == "nothing-here"
    d = tmp_path / "nulls"
    _responses(d, [None, None, None])
    assert community_name(d) == "nulls"


def test_read_table_checks_the_contract_and_keeps_one_split(tmp_path):
    _responses(tmp_path, ["a", "a", "a"])
    df = read_table(tmp_path, schema.RESPONSES_FILE, ("thread_id", "split"), split="train")
    assert df["thread_id"].tolist() == ["t1", "t3"] and df.index.tolist() == [0, 1]
    assert len(read_table(tmp_path, schema.RESPONSES_FILE, ("thread_id",))) == 3
    with pytest.raises(AmbientError, match=r"missing columns \['prompt'\]"):
        read_table(tmp_path, schema.RESPONSES_FILE, ("thread_id", "prompt"))
    with pytest.raises(AmbientError, match="missing; is .* a data directory"):
        read_table(tmp_path, schema.PAIRS_FILE, schema.PAIR_COLUMNS)
