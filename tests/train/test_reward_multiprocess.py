"""`ambient rm` on two processes (torchrun, CPU over gloo) trains the same model as one.

The expectation is always an independent single-process run (or, for the loss split,
the single-process loss of the whole batch): same losses and gradient norms per step,
same valid accuracy, same final weights and normalisation, up to float rounding (the
two processes score different sub-batches, so matmuls round differently)."""

from __future__ import annotations

import json
import shutil
import os
import subprocess
import sys

import pytest
import torch
from helpers import make_data_dir
from safetensors.torch import load_file

from ambient_rlhf.checkpoint import seed_everything
from ambient_rlhf.config import load_config
from ambient_rlhf.logging import read_jsonl
from ambient_rlhf.models.heads import ScalarHeadModel
from ambient_rlhf.models.reward_model import load_reward_model
from ambient_rlhf.models.load import load_causal_lm
from ambient_rlhf.models.tokenize import encode_pair, pad_batch
from ambient_rlhf.train import reward as R

# pairwise, full fine-tuning: 5 pairs a step cut 2 + 3 (unequal shares), a constant LR so a
# run of 2 steps resumed to 4 is the 4-step run; checkpoint at 2
PAIRWISE = ["objective=pairwise", "batch_size=5", "eval_steps=2", "save_steps=2", "lr_scheduler_type=constant",
            "warmup_steps=0"]
# ranking, top layer trained on cached hidden states: 16 train threads in batches of 3 threads
# = 6 steps, shares of 1 + 2 threads, and a last batch of 1 thread (one process's share empty)
RANKING = ["objective=ranking", "train_layers=1", "batch_size=3", "num_train_epochs=1", "eval_steps=3"]
COMMON = ["model=tiny-random", "learning_rate=1e-3", "eval_max_pairs=16", "norm_max_responses=12", "eval_split="]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 24 threads x 4 responses: 16 train threads (64 pairs, 16 rankings of 4), 4 valid
    return make_data_dir(tmp_path_factory.mktemp("rmmp") / "data", n_threads=24, k=4)


def two_processes(data, out, *args) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AMBIENT_PROGRESS": "0"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
                        "ambient_rlhf.cli", "rm", "--data", str(data), "--out", str(out), "-v", *COMMON, *args],
                       env=env, capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 processes" in r.stderr
    assert r.stdout.strip().splitlines() == [str(out)]  # printed once, by rank 0
    return r.stderr


def one_process(data, out, *args) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1): closer rounding
    try:
        R.train_reward(load_config(R.RewardConfig, None, [f"data={data}", f"out={out}", *COMMON, *args]))
    finally:
        torch.set_num_threads(threads)


def assert_same_run(one, two, steps: int) -> None:
    m1, m2 = read_jsonl(one / "metrics.jsonl"), read_jsonl(two / "metrics.jsonl")
    assert [r["step"] for r in m2] == list(range(1, steps + 1)) == [r["step"] for r in m1]
    for a, b in zip(m1, m2):
        for key in ("rm/loss", "rm/grad_norm", "rm/accuracy", "perf/sequences"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (a["step"], key)
        assert b.get("rm/valid_accuracy") == a.get("rm/valid_accuracy")
    assert sum("rm/valid_accuracy" in r for r in m2) >= 2
    # weights.  Pairwise and ranking losses see reward differences only, so the head's bias
    # gets a zero gradient but for rounding, which Adam turns into steps of about lr: the
    # bias wanders in both runs and is not compared (normalisation removes it).  Elsewhere
    # Adam magnifies rounding alike where a gradient nearly cancels, so body tensors are
    # compared to how far training moved them.
    # (the raw head, as the project's loader unfolds it from the saved score layer)
    h1, h2 = (load_reward_model(d).head.state_dict() for d in (one, two))
    seed_everything(0)  # the initial model, as train_reward builds it (seed 0)
    init = ScalarHeadModel(load_causal_lm("tiny-random"))
    assert (h1["weight"] - init.head.weight).abs().max() > 1e-3  # far more than the tolerance
    assert torch.allclose(h2["weight"], h1["weight"], rtol=0, atol=1e-5)
    b0 = init.lm.state_dict()
    b1, b2 = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert set(b1) == set(b2)
    del b1["score.weight"], b2["score.weight"]  # the head, compared above
    n_trained = 0
    for k in b1:
        moved = float((b1[k] - b0[k]).norm())
        if moved == 0:  # frozen (top mode)
            assert torch.equal(b2[k], b1[k]), k
        else:
            n_trained += 1
            assert float((b2[k] - b1[k]).norm()) < 1e-3 * moved, k
    assert n_trained >= 6
    # the models: the same normalised rewards, the same normalisation
    c1, c2 = (json.loads((d / "reward_config.json").read_text()) for d in (one, two))
    assert c2["norm_std"] == pytest.approx(c1["norm_std"], rel=1e-4)
    rm1, rm2 = load_reward_model(one), load_reward_model(two)
    texts = [("Question: apple river?", "MARKER stone cloud"), ("Question: apple river?", "lamp garden"),
             ("Question: summer engine planet?", "MARKER silver yellow coffee"), ("Question: a?", "b")]
    ids = [encode_pair(rm1.tokenizer, p, r, 64, 32, "auto").input_ids for p, r in texts]
    with torch.no_grad():
        r1, r2 = rm1.reward(*pad_batch(ids, 0, "right")), rm2.reward(*pad_batch(ids, 0, "right"))
    assert r1.std() > 0.05 and torch.allclose(r2, r1, rtol=0, atol=1e-4), (r1, r2)
    assert json.loads((two / "manifest.json").read_text())["counts"]["processes"] == 2


def test_shares_weigh_to_the_whole_batch_loss():
    """sum over shares of loss_share * loss(share) == loss(batch), for every objective,
    with threads of different sizes (ranking: 1/P_g differs) and a thread whose scores
    all tie (no pair: it must not count among the threads a ranking loss averages over)."""
    torch.manual_seed(0)

    class Raw:  # raw_reward of a scalar model: the first output
        @staticmethod
        def raw_reward(out):
            return out[:, 0]

    def units_for(objective):
        if objective == "pairwise":
            return [R.Unit(f"t{i // 2}", [], None, [i, i + 7]) for i in range(7)]
        if objective == "ranking":  # K = 2, 4, 3 (all tied), 5, 3, 2: halves of 2 and 3 live threads
            ks, scores = [2, 4, 3, 5, 3, 2], [[1, 0], [3, 1, 2, 0], [1, 1, 1], [0, 4, 2, 3, 1], [2, 2, 0], [0, 1]]
            out, start = [], 0
            for k, s in zip(ks, scores):
                out.append(R.Unit(f"t{start}", [], [float(x) for x in s], list(range(start, start + k))))
                start += k
            return out
        return [R.Unit(f"t{i}", [], (i % 3 if objective == "tiers" else 0.3 * i - 1.0), [i]) for i in range(7)]

    for objective in R.OBJECTIVES:
        units = units_for(objective)
        n_rows = 1 + max(r for u in units for r in u.rows)
        out = torch.randn(n_rows, 3 if objective == "tiers" else 1, dtype=torch.float64)
        pos = {r: r for r in range(n_rows)}
        whole, _ = R.batch_loss(objective, Raw, out, pos, units)
        for world in (2, 3):
            shares = R.split_units(units, world)
            assert [u for s in shares for u in s] == units  # contiguous, whole units, all of them
            total = sum(R.loss_share(objective, s, units) * R.batch_loss(objective, Raw, out, pos, s)[0]
                        for s in shares if s)
            assert float(total) == pytest.approx(float(whole), rel=1e-12), (objective, world)
        # an unweighted mean of the shares' losses would be wrong here: the test can fail
        shares = R.split_units(units, 2)
        naive = sum(R.batch_loss(objective, Raw, out, pos, s)[0] for s in shares) / 2
        assert abs(float(naive) - float(whole)) > 1e-3, objective
    # a batch of one unit: the second process's share is empty and it scores a row with weight 0
    one = [R.Unit("t", [], None, [4, 9])]
    assert [len(s) for s in R.split_units(one, 2)] == [0, 1]
    assert R.rank_share(one, 2, 0) == ([], [4]) and R.rank_share(one, 2, 1) == (one, [4, 9])


@pytest.mark.slow
def test_pairwise_full_two_processes_resumed_equal_one(data, tmp_path):
    two = tmp_path / "two"
    # two processes: 4 steps with checkpoints at 2 and 4; a kill after step 2 is what is
    # left without the step-4 checkpoint and the files written after it; resumed to step 4
    two_processes(data, two, *PAIRWISE, "max_steps=4")
    assert (two / "checkpoints" / "step-2").is_dir()
    shutil.rmtree(two / "checkpoints" / "step-4")
    for f in ("reward_config.json", "model.safetensors", "manifest.json"):
        (two / f).unlink()
    metrics = two / "metrics.jsonl"
    metrics.write_text("".join(line + "\n" for line in metrics.read_text().splitlines()[:2]))
    err = two_processes(data, two, *PAIRWISE, "max_steps=4", "resume=true")
    assert "resuming from" in err
    one = tmp_path / "one"
    one_process(data, one, *PAIRWISE, "max_steps=4")
    assert_same_run(one, two, 4)


@pytest.mark.slow
def test_ranking_top_layers_two_processes_equal_one(data, tmp_path):
    two = tmp_path / "two"
    two_processes(data, two, *RANKING, "eval_split=test")  # the final evaluation: main process only
    assert json.loads((two / "manifest.json").read_text())["counts"]["mode"] == "top"
    one = tmp_path / "one"
    one_process(data, one, *RANKING, "eval_split=test")
    assert_same_run(one, two, 6)
    e1, e2 = (json.loads((d / "eval.json").read_text()) for d in (one, two))
    assert e2["accuracy"]["n"] == e1["accuracy"]["n"] > 0
    assert e2["accuracy"]["value"] == e1["accuracy"]["value"]
