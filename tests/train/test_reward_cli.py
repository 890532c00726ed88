"""`ambient rm`, `ambient rm eval`, `ambient rm combine` through the real CLI entry point."""

import json
import shutil

import pytest
import torch
from helpers import make_data_dir

from ambient_rlhf import AmbientError
from ambient_rlhf.cli import main
from ambient_rlhf.models.reward_model import CompositeReward, load_reward_model
from ambient_rlhf.models.reward_inputs import RewardFunction
from ambient_rlhf.models.tokenize import encode_pair


def test_cli_train_eval_combine(tmp_path, capsys):
    d1 = make_data_dir(tmp_path / "askfoo", n_threads=18, k=3, seed=1)
    d2 = make_data_dir(tmp_path / "askbar", n_threads=18, k=3, seed=2)
    rank = tmp_path / "rank"
    # ranking objective, two communities with the prefix: one merged model, evaluated on each
    assert main(["rm", "--data", str(d1), str(d2), "--model", "tiny-random", "--out", str(rank),
                 "--objective", "ranking", "--train-layers", "1", "community_prefix=true", "max_steps=4"]) == 0
    ev = json.loads((rank / "eval.json").read_text())
    assert set(ev["communities"]) == {"askfoo", "askbar"}
    assert json.loads((rank / "reward_config.json").read_text())["community_prefix"] is True

    pair = tmp_path / "pair"
    assert main(["rm", "--data", str(d1), "--model", "tiny-random", "--out", str(pair), "max_steps=2",
                 "eval_split="]) == 0
    assert main(["rm", "eval", "--model", str(pair), "--data", str(d2), "--split", "valid",
                 "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert "askbar / valid" in out and "longer_wins" in out
    ev = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert ev["split"] == "valid" and ev["untimed_pairs"]["n"] > 0
    for f in ev["plots"]:
        assert (tmp_path / "ev" / f).stat().st_size > 1000

    comb = tmp_path / "comb"
    assert main(["rm", "combine", str(rank), str(pair), "--weights", "1,0.5", "--out", str(comb)]) == 0
    c = load_reward_model(comb)
    assert isinstance(c, CompositeReward) and c.tokenizer is not None
    a, b = load_reward_model(rank), load_reward_model(pair)
    # each member reads the text as it was trained: `rank` with the community prefix,
    # `pair` without; both under the default budgets (128 + 128)
    texts = [("Is a stone alive?", "No, it is not."), ("Why?", "Because the sky is blue " * 3)]
    tok = c.tokenizer
    with torch.no_grad():
        want = []
        for q, r in texts:
            ea = encode_pair(tok, "[askbar] " + q, r, 128, 128)
            eb = encode_pair(tok, q, r, 128, 128)
            one = lambda m, e: m.reward(torch.tensor([e.input_ids]), torch.ones(1, len(e.input_ids), dtype=torch.long))
            want.append((1.0 * one(a, ea) + 0.5 * one(b, eb)).item())
        got = RewardFunction(c, batch_size=2).texts([q for q, _ in texts], [r for _, r in texts], ["askbar"] * 2)
    assert got.tolist() == pytest.approx(want, rel=1e-6, abs=1e-5)  # batch of 2 vs one at a time: float32 rounding

    # members must share a tokenizer
    other = tmp_path / "other"
    shutil.copytree(pair, other)
    tok = load_reward_model(other).tokenizer
    tok.add_tokens(["<brand-new-token>"])
    tok.save_pretrained(other)
    with pytest.raises(AmbientError, match="different tokenizers"):
        main_raises(["rm", "combine", str(pair), str(other), "--out", str(tmp_path / "bad")])
    assert main(["rm", "combine", str(pair), "--weights", "1,2", "--out", str(tmp_path / "bad2")]) == 2


def main_raises(argv):
    from ambient_rlhf.cli.rm import cli

    return cli(argv[1:])
