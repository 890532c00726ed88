"""``ambient dpo``: which pairs train and with what weight, the cached reference, the
trainer through its command line (start at log 2, learns the planted preference, LoRA,
accumulation invariance), resume after kill -9, two processes against one."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from helpers import make_data_dir

from ambient_rlhf import AmbientError
from ambient_rlhf.cli import main
from ambient_rlhf.config import check_documented, load_config
from ambient_rlhf.logging import read_jsonl
from ambient_rlhf.models.load import load_causal_lm, load_tokenizer
from ambient_rlhf.train.dpo import (REFERENCE_FILE, DPOConfig, Pair, adjust_for_length, cached_reference, encode,
                                   load_pairs, train_dpo)

TINY = ["--model", "tiny-random", "per_device_train_batch_size=2", "gradient_accumulation_steps=2", "learning_rate=1e-3",
        "warmup_steps=0", "lr_scheduler_type=constant", "logging_steps=1", "sample_prompts=1", "sample_max_new_tokens=4", "eval_pairs=8"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    # 48 threads x 4 answers; train threads (t % 6 < 4): 32, each with 2 MARKER answers
    # above 2 others -> 4 pairs a thread, 128 train pairs
    return make_data_dir(tmp_path_factory.mktemp("dpodata") / "data", n_threads=48, k=4)


def _cfg(data_dir, out, *extra) -> DPOConfig:
    args = [a for a in TINY if "=" in a] + list(extra)
    return load_config(DPOConfig, None, [f"data={data_dir}", "model=tiny-random", f"out={out}", *args])


def _rows(out, key):
    return {r["step"]: r[key] for r in read_jsonl(Path(out) / "metrics.jsonl") if key in r}


def test_config_documented():
    assert check_documented(DPOConfig) == []


def test_docs_usage_uses_current_key_names(warnings_seen):
    import re
    import shlex

    text = (Path(__file__).resolve().parents[2] / "docs" / "dpo.md").read_text()
    block = text.split("## Usage", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    keys = [a for line in block.splitlines() if " dpo " in f" {line} " for a in shlex.split(line)
            if re.match(r"^[A-Za-z_][\w.]*=", a)]
    assert "learning_rate=5e-6" in keys and len(keys) >= 4
    load_config(DPOConfig, None, keys)  # an unknown or renamed-away key raises


# ---- which pairs, which weights ------------------------------------------------------------
def test_time_rule_pairs_are_pairs_parquet(data_dir):
    counts = {}
    pairs = load_pairs(_cfg(data_dir, "x"), "train", counts)
    df = pd.read_parquet(data_dir / "pairs.parquet")
    assert len(pairs) == int((df["split"] == "train").sum()) == 128
    assert all(p.weight == 1.0 and p.chosen.startswith("MARKER") and not p.rejected.startswith("MARKER") for p in pairs)
    assert counts["train_pairs"] == 128


def test_train_half_keeps_one_half_of_the_train_threads(data_dir):
    """train_half=a|b: the train pairs of the threads whose salted SHA-256 (computed here,
    as docs/reward.md describes the halves) puts them in that half; the halves split the
    train pairs between them; valid pairs are all kept."""
    import hashlib

    def half(t):
        return "a" if hashlib.sha256(("ambient-half:" + t).encode()).digest()[0] % 2 == 0 else "b"

    full = load_pairs(_cfg(data_dir, "x"), "train", {})
    got = {}
    for h in ("a", "b"):
        counts = {}
        got[h] = load_pairs(_cfg(data_dir, "x", f"train_half={h}"), "train", counts)
        assert {p.thread for p in got[h]} == {p.thread for p in full if half(p.thread) == h}
        assert counts["train_other_half_pairs"] == len(full) - len(got[h]) and counts["train_pairs"] == len(got[h])
        assert load_pairs(_cfg(data_dir, "x", f"train_half={h}"), "valid", {}) == load_pairs(_cfg(data_dir, "x"), "valid", {})
    assert 0 < len(got["a"]) < len(full) and len(got["a"]) + len(got["b"]) == len(full)


def test_ranking_pairs_weigh_each_thread_once(data_dir):
    counts = {}
    pairs = load_pairs(_cfg(data_dir, "x", "pairs=ranking"), "train", counts)
    # 32 train threads of 4 ranked answers (distinct adjusted ranks): C(4, 2) = 6 ordered pairs each, 1/6 apiece
    assert len(pairs) == 32 * 6
    assert [p.weight for p in pairs] == pytest.approx([1 / 6] * len(pairs))
    by_thread = {}
    for p in pairs:
        by_thread[p.thread] = by_thread.get(p.thread, 0.0) + p.weight
    assert len(by_thread) == 32 and all(w == pytest.approx(1.0) for w in by_thread.values())
    # rankings.parquet lists answers best first: the first answer wins all 3 of its pairs
    r = pd.read_parquet(data_dir / "rankings.parquet")
    first = r[r["split"] == "train"].iloc[0]
    wins = [p for p in pairs if p.thread == first["thread_id"] and p.chosen == first["responses"][0]]
    assert len(wins) == 3
    # max_ranked=2 keeps 2 answers a thread: 1 pair, weight 1
    few = load_pairs(_cfg(data_dir, "x", "pairs=ranking", "max_ranked=2"), "train", {})
    assert len(few) == 32 and {p.weight for p in few} == {1.0}


def _responses(path: Path) -> Path:
    """One thread, three answers: A (score 40, posted at +100 s), B (10, +50 s), C (4, +200 s).
    Candidate pairs (ratio >= 2, both scores >= 2): A>B (A later: passes the time rule),
    A>C and B>C (the winner came first: maybe exposure)."""
    path.mkdir(parents=True)
    base = dict(thread_id="t1", prompt="Why?", prompt_score=50, prompt_created_utc=1000, rank_z=0.0, delay_z=0.0,
                adjusted=0.0, tier="ok", reply_sentiment=None, split="train")
    rows = [dict(base, response_id="A", response="answer a", score=40, created_utc=1100, rank=0),
            dict(base, response_id="B", response="answer b", score=10, created_utc=1050, rank=1),
            dict(base, response_id="C", response="answer c", score=4, created_utc=1200, rank=2)]
    pd.DataFrame(rows).to_parquet(path / "responses.parquet", index=False)
    return path


def test_all_pairs_and_exposure_weight(tmp_path):
    d = _responses(tmp_path / "d")
    for w, expected in [(1.0, {("answer a", "answer b"): 1.0, ("answer a", "answer c"): 1.0, ("answer b", "answer c"): 1.0}),
                        (0.25, {("answer a", "answer b"): 1.0, ("answer a", "answer c"): 0.25, ("answer b", "answer c"): 0.25}),
                        (0.0, {("answer a", "answer b"): 1.0})]:
        counts = {}
        pairs = load_pairs(_cfg(d, "x", "pairs=all", f"exposure_weight={w}"), "train", counts)
        assert {(p.chosen, p.rejected): p.weight for p in pairs} == expected
        assert counts["train_chosen_earlier"] == 2
        assert counts["train_dropped_exposure"] == (2 if w == 0 else 0)


def test_length_balance_and_reweight():
    # chosen longer (in words) in 3 pairs, shorter in 1, equal in 1
    def pairs():
        return [Pair("t", "p", "a b c", "a", 1.0), Pair("t", "p", "a b", "a", 1.0), Pair("t", "p", "a b c d", "a b", 0.5),
                Pair("t", "p", "a", "a b", 1.0), Pair("t", "p", "a b", "c d", 1.0)]
    counts = {}
    kept = adjust_for_length(pairs(), "balance", 0, counts)
    # 2 of the 3 "longer wins" go: 1 longer, 1 shorter, 1 equal remain
    assert len(kept) == 3 and counts["length_balance_dropped"] == 2
    assert sum(len(p.chosen.split()) > len(p.rejected.split()) for p in kept) == 1
    counts = {}
    rw = adjust_for_length(pairs(), "reweight", 0, counts)
    # longer side weighs 1 + 1 + 0.5 = 2.5, shorter side 1: the longer side is scaled by 1/2.5
    assert [p.weight for p in rw] == pytest.approx([0.4, 0.4, 0.2, 1.0, 1.0])
    assert counts["length_reweight_factor"] == pytest.approx(0.4)


# ---- the reference, cached -------------------------------------------------------------------
def _logp_by_hand(lm, ids: list[int], prompt_len: int) -> float:
    """sum_t log softmax(logits_{t-1})[token_t] over the answer tokens, one sequence, no padding."""
    with torch.no_grad():
        logits = lm(torch.tensor([ids])).logits[0].double()  # (T, V)
    logp = torch.log_softmax(logits, -1)
    return float(sum(logp[t - 1, ids[t]] for t in range(prompt_len, len(ids))))


def test_cached_reference_equals_recomputed(data_dir, tmp_path):
    out = train_dpo(_cfg(data_dir, tmp_path / "o", "max_steps=2", "eval_steps=0", "save_steps=0"))
    cache = out / REFERENCE_FILE
    from safetensors.torch import load_file

    ref = load_file(str(cache))
    assert ref["train"].shape == (128, 2) and ref["valid"].shape == (8, 2)
    # 2 steps of 4 pairs draw 8 train pairs: only those are computed (the others are NaN)
    used = (~ref["train"].isnan().any(1)).nonzero()[:, 0].tolist()
    assert len(used) == 8 and not ref["valid"].isnan().any()
    # recomputed independently: the start model, one sequence at a time, log-softmax by hand
    cfg = _cfg(data_dir, "x")
    tok = load_tokenizer("tiny-random")
    lm = load_causal_lm("tiny-random").eval()
    train_ex, _ = encode(tok, load_pairs(cfg, "train", {}), cfg, "chat")
    for i in used[:3]:
        e = train_ex[i]
        assert float(ref["train"][i, 0]) == pytest.approx(_logp_by_hand(lm, e.chosen, e.prompt_len), abs=2e-4)
        assert float(ref["train"][i, 1]) == pytest.approx(_logp_by_hand(lm, e.rejected, e.prompt_len), abs=2e-4)

    # a matching fingerprint is read, not recomputed (this loss function would fail)
    class NoForward(torch.nn.Module):
        def forward(self, *a):
            raise AssertionError("the reference was recomputed")

    sets = {"train": [train_ex[i] for i in used[:3]]}
    with pytest.raises(AssertionError, match="recomputed"):
        cached_reference(tmp_path / "c.safetensors", "k1", NoForward(), sets, tok.pad_token_id, 2, "cpu")
    from ambient_rlhf.train.common import CausalLMLoss

    first = cached_reference(tmp_path / "c.safetensors", "k1", CausalLMLoss(lm), sets, tok.pad_token_id, 2, "cpu")
    again = cached_reference(tmp_path / "c.safetensors", "k1", NoForward(), sets, tok.pad_token_id, 2, "cpu")
    assert torch.equal(first["train"], again["train"])
    assert torch.equal(first["train"], ref["train"][used[:3]])  # the trainer's cache holds the same numbers


# ---- the trainer -----------------------------------------------------------------------------
def test_cli_run_starts_at_log2_and_learns_the_planted_preference(data_dir, tmp_path):
    out = tmp_path / "o"
    assert main(["dpo", "--data", str(data_dir), "--out", str(out), *TINY, "max_steps=8", "eval_steps=4",
                 "save_steps=4"]) == 0
    ev = {r["step"]: r for r in read_jsonl(out / "metrics.jsonl") if "eval/loss" in r}
    assert list(ev) == [0, 4, 8]
    # step 0: the policy is the reference, so h = 0 and the loss is -log sigmoid(0) = log 2
    assert ev[0]["eval/loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert ev[0]["eval/rewards/margin"] == pytest.approx(0.0, abs=1e-5)
    # the MARKER answers win every pair: after 8 steps the implicit reward prefers them
    assert ev[8]["eval/loss"] < ev[0]["eval/loss"] - 0.05
    assert ev[8]["eval/rewards/margin"] > 0 and ev[8]["eval/rewards/accuracy"] > 0.8
    assert ev[8]["eval/sample_length"] <= 4
    assert [s["step"] for s in read_jsonl(out / "samples.jsonl")] == [0, 4, 8]
    m = json.loads((out / "manifest.json").read_text())
    assert m["stage"] == "dpo" and m["counts"]["train_pairs"] == 128 and m["counts"]["steps"] == 8
    assert json.loads((out / "ambient_model.json").read_text())["stage"] == "dpo"
    card = (out / "README.md").read_text()
    assert "direct preference optimisation" in card and "AutoModelForCausalLM.from_pretrained" in card
    assert not (out / "checkpoints").exists()
    from transformers import AutoModelForCausalLM

    a, b = AutoModelForCausalLM.from_pretrained(out).state_dict(), load_causal_lm("tiny-random").state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_ipo_and_lora(data_dir, tmp_path):
    out = train_dpo(_cfg(data_dir, tmp_path / "o", "loss=ipo", "beta=0.5", "max_steps=2", "eval_steps=0",
                         "save_steps=0", "sample_prompts=0", "lora.enabled=true", "lora.r=4"))
    ev = [r["eval/loss"] for r in read_jsonl(out / "metrics.jsonl") if "eval/loss" in r]
    assert ev[0] == pytest.approx((0 - 1 / (2 * 0.5)) ** 2, abs=1e-5)  # IPO at h = 0: (1/(2 beta))^2 = 1
    assert ev[1] < ev[0]
    assert (out / "adapter" / "adapter_config.json").is_file()


def test_accumulation_invariance(data_dir, tmp_path):
    """1 micro-batch of 4 pairs and 2 of 2 form the same weighted step (ranking weights differ)."""
    common = ["pairs=ranking", "max_steps=3", "eval_steps=0", "save_steps=0", "sample_prompts=0"]
    a = train_dpo(_cfg(data_dir, tmp_path / "a", *common, "per_device_train_batch_size=4",
                       "gradient_accumulation_steps=1"))
    b = train_dpo(_cfg(data_dir, tmp_path / "b", *common, "per_device_train_batch_size=1",
                       "gradient_accumulation_steps=4"))
    la, lb = _rows(a, "train/loss"), _rows(b, "train/loss")
    assert list(la) == [1, 2, 3]
    assert lb == pytest.approx(la, rel=1e-5)
    assert _rows(b, "train/rewards/margin")[3] == pytest.approx(_rows(a, "train/rewards/margin")[3], rel=1e-4)


def test_clear_errors(data_dir, tmp_path, capsys):
    def err(*args):
        assert main(["dpo", "--data", str(data_dir), "--model", "tiny-random", "--out", str(tmp_path / "e"), *args]) == 2
        return capsys.readouterr().err

    assert "exposure_weight=0.5 applies to pairs=all" in err("exposure_weight=0.5")
    assert "goal=good: the model tiny-random has no goal tokens" in err("goal=good")
    assert "unknown config key 'bogus'" in err("bogus=1")
    assert "length=balance/reweight applies to pairs=time_rule or all" in err("pairs=ranking", "length=balance")
    assert main(["dpo", "--data", str(tmp_path / "nope"), "--model", "tiny-random", "--out", str(tmp_path / "e2")]) == 2
    assert "pairs.parquet: missing" in capsys.readouterr().err
    with pytest.raises(AmbientError, match="--model is required"):
        train_dpo(DPOConfig(data=str(data_dir), out=str(tmp_path / "e3")))
    assert main(["dpo", "--help-config"]) == 0
    assert "beta = 0.1" in capsys.readouterr().out


# ---- resume, processes -----------------------------------------------------------------------
def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", AMBIENT_PROGRESS="0", PYTHONUNBUFFERED="1")


def _args(data_dir, out, *extra):
    return ["dpo", "--data", str(data_dir), "--out", str(out), *TINY, "max_steps=12", "lr_scheduler_type=cosine",
            "warmup_steps=2", "eval_steps=4", "save_steps=4", "save_total_limit=1", *extra]


@pytest.mark.slow
def test_resume_after_kill_equals_uninterrupted(data_dir, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    cmd = [sys.executable, "-m", "ambient_rlhf.cli"]
    proc = subprocess.Popen(cmd + _args(data_dir, cut), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (cut / "checkpoints" / "step-4").is_dir() and any(r["step"] >= 6 for r in read_jsonl(cut / "metrics.jsonl")):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (cut / "manifest.json").exists()
    r = subprocess.run(cmd + _args(data_dir, cut, "--resume"), env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "reference log-probs read from" in r.stderr or "resuming from" in r.stderr
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same float order as the subprocesses
    try:
        assert main(_args(data_dir, full)) == 0
    finally:
        torch.set_num_threads(threads)
    keys = ("train/loss", "train/rewards/margin", "eval/loss", "eval/rewards/accuracy")
    for k in keys:
        lc, lf = _rows(cut, k), _rows(full, k)
        assert lc == lf, k  # bit for bit
    assert list(_rows(cut, "train/loss")) == list(range(1, 13))
    assert [s["step"] for s in read_jsonl(cut / "samples.jsonl")] == [0, 4, 8, 12]
    sf, sc = load_causal_lm(str(full)).state_dict(), load_causal_lm(str(cut)).state_dict()
    assert all(torch.equal(sf[k], sc[k]) for k in sf)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(data_dir, tmp_path):
    """torchrun --nproc_per_node 2 (gloo on CPU) with batch 2 each == one process with batch 4:
    the same global batch of weighted ranking pairs, split over the processes."""
    args = ["--data", str(data_dir), *TINY, "pairs=ranking", "gradient_accumulation_steps=1", "max_steps=3",
            "eval_steps=3", "save_steps=0", "sample_prompts=0"]
    two, one = tmp_path / "two", tmp_path / "one"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(_free_port()), "-m", "ambient_rlhf.cli", "dpo", "--out", str(two), *args,
                        "per_device_train_batch_size=2"],
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((two / "manifest.json").read_text())["counts"]["processes"] == 2
    assert main(["dpo", "--out", str(one), *args, "per_device_train_batch_size=4"]) == 0
    for k in ("train/loss", "train/rewards/margin", "train/logps/chosen", "eval/loss", "eval/rewards/margin"):
        a, b = _rows(two, k), _rows(one, k)
        assert list(a) == list(b) and len(a) >= 1, k
        for s in a:
            assert a[s] == pytest.approx(b[s], rel=1e-5, abs=1e-6), (k, s)
    assert _rows(one, "eval/rewards/margin")[3] != 0.0  # step 3 follows real updates
