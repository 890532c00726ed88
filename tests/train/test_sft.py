"""Behaviour cloning: loss masking, padding and accumulation invariance, selection rules,
CLI smoke (weights change, output loads), LoRA, goal tokens, resume after a kill."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import make_data_dir

from ambient_rlhf import AmbientError
from ambient_rlhf.cli import main
from ambient_rlhf.config import check_documented, load_config
from ambient_rlhf.logging import read_jsonl
from ambient_rlhf.models.load import load_causal_lm, load_tokenizer
from ambient_rlhf.train.common import CausalLMLoss, LoraSettings, lr_factor, token_nll_per_example
from ambient_rlhf.train.sft import SFTConfig, collate, epoch_batches, read_responses, select_examples, split_step, train_sft

TINY = dict(model="tiny-random", learning_rate=1e-3, warmup_steps=0, lr_scheduler_type="constant", sample_prompts=1,
            sample_max_new_tokens=4, eval_examples=16)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    # 48 threads x 4 responses: train = threads with t % 6 < 4 -> 32 threads, 128 rows
    return make_data_dir(tmp_path_factory.mktemp("sftdata") / "data", n_threads=48, k=4)


def cfg_for(data_dir, out, **kw) -> SFTConfig:
    return SFTConfig(data=str(data_dir), out=str(out), **{**TINY, **kw})


def train_losses(out) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_jsonl(Path(out) / "metrics.jsonl") if "train/loss" in r}


def test_config_documented():
    assert check_documented(SFTConfig) == []


def test_loss_masking_hand_built(tiny_model_path):
    lm = load_causal_lm(tiny_model_path)
    # ids [5, 6, 7, 8, 9] with a 2-token prompt: labels are -100, -100, 7, 8, 9, so the
    # loss predicts 7 from position 1, 8 from 2, 9 from 3 (position 4 predicts nothing).
    ids, att, lab = collate([([5, 6, 7, 8, 9], 2), ([5, 6, 7], 1)], pad_id=0)
    assert lab.tolist() == [[-100, -100, 7, 8, 9], [-100, 6, 7, -100, -100]]
    assert att.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    nll, n = token_nll_per_example(lm, ids, att, lab)
    assert n.tolist() == [3, 2]
    with torch.no_grad():
        logp = lm(torch.tensor([[5, 6, 7, 8, 9]])).logits[0].log_softmax(-1)
    expected0 = -(logp[1, 7] + logp[2, 8] + logp[3, 9])
    expected1 = -(logp[0, 6] + logp[1, 7])  # the second example is a prefix of the first
    assert nll[0].item() == pytest.approx(expected0.item(), rel=1e-5)
    assert nll[1].item() == pytest.approx(expected1.item(), rel=1e-5)


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_invariance(tiny_model_path, side):
    lm = load_causal_lm(tiny_model_path)
    examples = [([11, 12, 13, 14, 15, 16, 17], 3), ([21, 22, 23], 1), ([31, 32, 33, 34, 35], 4)]
    ids, att, lab = collate(examples, pad_id=0, side=side)
    with torch.no_grad():
        nll, n = token_nll_per_example(lm, ids, att, lab)
        for i, ex in enumerate(examples):
            a_ids, a_att, a_lab = collate([ex], pad_id=0)
            alone, n_alone = token_nll_per_example(lm, a_ids, a_att, a_lab)
            assert n[i].item() == n_alone.item() == len(ex[0]) - ex[1]
            assert nll[i].item() == pytest.approx(alone.item(), rel=1e-5, abs=1e-5)
    # the head-only-at-labels path equals the plain full-logits path
    plain = CausalLMLoss(lm)
    plain.selective = False
    with torch.no_grad():
        assert torch.allclose(plain(ids, att, lab)[0], nll, rtol=1e-5)


def test_lr_schedule_by_hand():
    # warmup 4: factors 1/5, 2/5, 3/5, 4/5, then cosine over the 8 remaining steps
    assert [lr_factor(s, "cosine", 4, 12) for s in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert lr_factor(4, "cosine", 4, 12) == pytest.approx(1.0)
    assert lr_factor(8, "cosine", 4, 12) == pytest.approx(0.5)  # half-way: (1 + cos(pi/2)) / 2
    assert lr_factor(8, "linear", 4, 12) == pytest.approx(0.5)
    assert lr_factor(12, "linear", 4, 12) == pytest.approx(0.0)
    assert lr_factor(100, "constant", 4, 12) == 1.0


def test_selection_rules(data_dir):
    # make_data_dir: 32 train threads x 4 responses, ranks 0..3 with tiers good, ok, ok, bad;
    # the 2 MARKER responses score 20..30, the others 0..5.
    df = read_responses(data_dir, SFTConfig(data=str(data_dir)))
    counts = {}
    for sel, kw in [("all", {}), ("top_tier", {}), ("top_k", {"top_k": 2}), ("min_score", {"min_score": 10})]:
        rows, c = select_examples(df, "train", SFTConfig(data=str(data_dir), select=sel, **kw))
        counts[sel] = len(rows)
        if sel in ("top_k", "min_score"):
            assert all(r[1].startswith("MARKER") for r in rows)
    assert counts == {"all": 128, "top_tier": 32, "top_k": 64, "min_score": 64}
    rows, _ = select_examples(df, "train", SFTConfig(data=str(data_dir), condition="tier"))
    assert sorted({r[2] for r in rows}) == ["bad", "good", "ok"] and len(rows) == 128


def test_batches_depend_only_on_the_global_batch():
    lengths = [5, 9, 3, 7, 7, 2, 8, 4, 6, 1, 10, 12]
    b = epoch_batches(lengths, 4, seed=1, epoch=0, group_by_length=True)
    assert sorted(j for x in b for j in x) == list(range(12)) and all(len(x) == 4 for x in b)
    assert b == epoch_batches(lengths, 4, seed=1, epoch=0, group_by_length=True)
    assert b != epoch_batches(lengths, 4, seed=1, epoch=1, group_by_length=True)
    # one window (12 < 4 * 32) sorted by length, so each batch is a run of the sorted order
    assert sorted(sorted(lengths[j] for j in x) for x in b) == [[1, 2, 3, 4], [5, 6, 7, 7], [8, 9, 10, 12]]
    assert split_step([0, 1, 2, 3, 4], lengths, 2) == [[1, 3, 4], [0, 2]]


def test_grad_accumulation_invariance(data_dir, tmp_path):
    # 1 micro-batch of 8 and 8 micro-batches of 1 see the same 8 examples per step and
    # normalise by the same token count, so losses and weights agree up to float rounding.
    common = dict(max_steps=3, logging_steps=1, eval_steps=0, save_steps=0, sample_prompts=0)
    a = train_sft(cfg_for(data_dir, tmp_path / "a", per_device_train_batch_size=8, gradient_accumulation_steps=1, **common))
    b = train_sft(cfg_for(data_dir, tmp_path / "b", per_device_train_batch_size=1, gradient_accumulation_steps=8, **common))
    la, lb = train_losses(a), train_losses(b)
    assert list(la) == [1, 2, 3]
    for s in la:
        assert la[s] == pytest.approx(lb[s], rel=1e-5)
    assert la[3] < la[1]  # and it learns
    wa, wb = load_causal_lm(str(a)).state_dict(), load_causal_lm(str(b)).state_dict()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=2e-5), k


def test_cli_smoke_weights_change_and_output_loads(data_dir, tmp_path, tiny_model_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "sft"
    rc = main(["sft", "--data", str(data_dir), "--model", "tiny-random", "--out", str(out), "max_steps=4",
               "per_device_train_batch_size=2", "gradient_accumulation_steps=2", "learning_rate=1e-3", "eval_steps=2",
               "save_steps=2", "sample_prompts=2", "sample_max_new_tokens=4", "logging_steps=1"])
    assert rc == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    card = (out / "README.md").read_text()  # the model card: the final path (not the temporary one), the data
    assert f"from_pretrained({str(out)!r})" in card and f"input `{data_dir}`" in card
    base = load_causal_lm(tiny_model_path)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, base.state_dict()[k])]
    assert len(changed) == len(base.state_dict())  # every tensor moved
    m = json.loads((out / "manifest.json").read_text())
    assert m["stage"] == "sft" and m["counts"]["train"]["examples"] == 128 and m["config"]["max_steps"] == 4
    rows = read_jsonl(out / "metrics.jsonl")
    evals = [r["eval/loss"] for r in rows if "eval/loss" in r]
    assert len(evals) == 3 and evals[-1] < evals[0]
    assert all(r["eval/perplexity"] == pytest.approx(math.exp(r["eval/loss"])) for r in rows if "eval/loss" in r)
    samples = read_jsonl(out / "samples.jsonl")
    assert [s["step"] for s in samples] == [2, 2, 4, 4]
    assert not (out / "checkpoints").exists()
    # report_to=[tensorboard] (the default): TensorBoard itself reads the same train loss
    acc = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                              reason="tensorboard is not installed (the `tensorboard` extra)")
    ev = acc.EventAccumulator(str(out / "tensorboard"))
    ev.Reload()
    want = [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]
    assert [(e.step, e.value) for e in ev.Scalars("train/loss")] == [(s, pytest.approx(v, rel=1e-6)) for s, v in want]
    # a second fresh run refuses the existing directory
    with pytest.raises(AmbientError, match="exists"):
        train_sft(cfg_for(data_dir, out, max_steps=1))


def test_tier_conditioning_and_lora(data_dir, tmp_path, tiny_model_path):
    from ambient_rlhf.models.tokenize import has_goal_tokens
    from ambient_rlhf.train.generate import generate

    out = train_sft(cfg_for(data_dir, tmp_path / "tier", condition="tier", max_steps=3, per_device_train_batch_size=4, gradient_accumulation_steps=1,
                            eval_steps=0, save_steps=0, lora=LoraSettings(enabled=True, r=4, alpha=8)))
    tok = load_tokenizer(str(out))
    assert has_goal_tokens(tok)
    assert (out / "adapter" / "adapter_config.json").is_file()
    model = load_causal_lm(str(out))
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    base = load_causal_lm(tiny_model_path).state_dict()
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(model.state_dict()[q], base[q])  # the adapter was merged in
    texts = generate(str(out), ["Question: apple river?", "Question: stone?"], goal="good", max_new_tokens=5)
    assert len(texts) == 2
    with pytest.raises(AmbientError, match="no goal tokens"):
        generate(tiny_model_path, ["x"], goal="good")


def _sft_args(data_dir, out, *extra):
    return ["sft", "--data", str(data_dir), "--model", "tiny-random", "--out", str(out), "max_steps=16",
            "per_device_train_batch_size=2", "gradient_accumulation_steps=2", "learning_rate=1e-3", "logging_steps=1", "eval_steps=4", "save_steps=4",
            "save_total_limit=1", "sample_prompts=1", "sample_max_new_tokens=4", "warmup_steps=3",
            "lr_scheduler_type=cosine", *extra]


def test_resume_after_kill_equals_uninterrupted(data_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AMBIENT_PROGRESS": "0"}
    full, cut = tmp_path / "full", tmp_path / "cut"
    cmd = [sys.executable, "-m", "ambient_rlhf.cli"]
    proc = subprocess.Popen(cmd + _sft_args(data_dir, cut), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 90
    while time.time() < deadline and not (cut / "checkpoints" / "step-8").is_dir() and proc.poll() is None:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed mid-run, not finished
    assert not (cut / "manifest.json").exists()
    killed_at = max(train_losses(cut))
    assert 8 <= killed_at < 16
    subprocess.run(cmd + _sft_args(data_dir, cut, "--resume"), env=env, check=True, capture_output=True)
    # the uninterrupted run, in this process (same single thread, so the same float order)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_sft_args(data_dir, full)) == 0
    finally:
        torch.set_num_threads(threads)
    lf, lc = train_losses(full), train_losses(cut)
    assert list(lc) == list(range(1, 17))
    assert lc == lf  # bit-for-bit: same data order, optimizer, scheduler and weights
    ef = [r["eval/loss"] for r in read_jsonl(full / "metrics.jsonl") if "eval/loss" in r]
    ec = [r["eval/loss"] for r in read_jsonl(cut / "metrics.jsonl") if "eval/loss" in r]
    assert len(ec) == 5 and ec == ef
    assert [s["step"] for s in read_jsonl(cut / "samples.jsonl")] == [4, 8, 12, 16]
    sf, sc = load_causal_lm(str(full)).state_dict(), load_causal_lm(str(cut)).state_dict()
    assert all(torch.equal(sf[k], sc[k]) for k in sf)


@pytest.mark.slow
def test_two_processes_match_one(data_dir, tmp_path):
    # 2 processes x batch 2 and 1 process x batch 4 form the same global batch of 4
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AMBIENT_PROGRESS": "0"}
    args = ["--data", str(data_dir), "--model", "tiny-random", "max_steps=3", "gradient_accumulation_steps=1", "learning_rate=1e-3",
            "logging_steps=1", "eval_steps=3", "save_steps=0", "sample_prompts=0"]
    two = tmp_path / "two"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
                        "ambient_rlhf.cli", "sft", "--out", str(two), "per_device_train_batch_size=2", "-v", *args],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "2 processes" in r.stderr
    one = train_sft(load_config(SFTConfig, None, [f"out={tmp_path / 'one'}", "per_device_train_batch_size=4"] +
                                [a for a in args if "=" in a] + [f"data={data_dir}", "model=tiny-random"]))
    l2, l1 = train_losses(two), train_losses(one)
    assert list(l2) == [1, 2, 3]
    for s in l1:
        assert l2[s] == pytest.approx(l1[s], rel=1e-5)
    assert json.loads((two / "manifest.json").read_text())["counts"]["processes"] == 2


@pytest.mark.slow
def test_real_default_model_two_steps_and_generate(data_dir, tmp_path, default_model_path):
    from ambient_rlhf.train.generate import generate

    out = train_sft(SFTConfig(data=str(data_dir), out=str(tmp_path / "real"), model=default_model_path, max_steps=2,
                              per_device_train_batch_size=2, gradient_accumulation_steps=1, max_prompt_tokens=64, max_response_tokens=32,
                              eval_examples=4, eval_steps=0, save_steps=0, sample_prompts=0, learning_rate=1e-5))
    evals = [r["eval/loss"] for r in read_jsonl(out / "metrics.jsonl") if "eval/loss" in r]
    assert len(evals) == 2 and all(math.isfinite(e) for e in evals)
    # an instruction-tuned model answers a plain question in words
    texts = generate(str(out), ["What is the capital of France?"], max_new_tokens=8, temperature=0.0)
    assert "Paris" in texts[0]


def test_clear_errors(tmp_path, capsys, data_dir):
    assert main(["sft", "--data", str(tmp_path / "nope"), "--model", "tiny-random", "--out", str(tmp_path / "o")]) == 2
    assert "responses.parquet: not found" in capsys.readouterr().err
    assert main(["sft", "--data", str(data_dir), "--out", str(tmp_path / "o"), "bogus=1"]) == 2
    assert "unknown config key 'bogus'" in capsys.readouterr().err
    # the output directory is checked before anything is read or deleted: out == data with
    # --overwrite would have removed the data (issue 13)
    before = sorted((p.name, p.stat().st_size) for p in data_dir.iterdir())
    for flag in ("--overwrite", "--resume"):
        assert main(["sft", "--data", str(data_dir), "--model", "tiny-random", "--out", str(data_dir), flag]) == 2
        assert f"--out {data_dir} is the input {data_dir}" in capsys.readouterr().err
    assert sorted((p.name, p.stat().st_size) for p in data_dir.iterdir()) == before
    # a data directory is another stage's output
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text('{"stage": "data", "config": {}}')
    assert main(["sft", "--data", str(data_dir), "--model", "tiny-random", "--out", str(other)]) == 2
    assert "holds the output of `ambient data`" in capsys.readouterr().err
    assert main(["sft", "--help-config"]) == 0
    assert "max_prompt_tokens = 256" in capsys.readouterr().out
