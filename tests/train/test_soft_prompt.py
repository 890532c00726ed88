"""Soft-prompt goals (``--peft prompt``): the wrapper against peft's own forward, SFT with
one prompt per tier (base weights bit-identical, the standard peft loader, exact resume),
RL that trains only the prompt, and the steering test on a soft-prompt model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import make_data_dir

from ambient_rlhf.cli import main
from ambient_rlhf.logging import read_jsonl
from ambient_rlhf.models.load import load_causal_lm, load_tokenizer
from ambient_rlhf.models.soft_prompt import SOFT_PROMPT_DIR, SoftPromptLM, wrap

SFT = ["--model", "tiny-random", "--condition", "tier", "--peft", "prompt", "max_steps=6", "per_device_train_batch_size=4", "gradient_accumulation_steps=2",
       "logging_steps=1", "eval_steps=3", "eval_examples=8", "warmup_steps=0", "lr_scheduler_type=cosine", "sample_prompts=1",
       "sample_max_new_tokens=3", "prompt_tuning.virtual_tokens=3", "prompt_tuning.learning_rate=0.05", "save_steps=3",
       "save_total_limit=1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data_dir(tmp_path_factory.mktemp("softdata") / "data", n_threads=24, k=4)


def _losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r.get("train/loss", r.get("eval/loss"))) for r in read_jsonl(out / "metrics.jsonl")
            if "train/loss" in r or "eval/loss" in r]


def test_mixed_goal_batch_equals_peft_forward_of_each_prompt(tiny_model_path):
    # the reference is peft's own PeftModel forward with one adapter active at a time
    tok = load_tokenizer(tiny_model_path)
    lm = wrap(load_causal_lm(tiny_model_path), tok, ["good", "ok", "bad"], 3, "a {name} answer")
    with torch.no_grad():
        for n in lm.names:  # distinct prompts, so a wrong selection shows
            lm.peft.prompt_encoder[n].embedding.weight.add_(torch.randn(3, lm.config.hidden_size))
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]])
    mixed = lm(ids, goal_idx=torch.tensor([2, 0, 1])).logits  # rows: bad, good, ok
    for row, name in enumerate(["bad", "good", "ok"]):
        lm.peft.set_adapter(name)
        want = lm.peft(input_ids=ids[row:row + 1], attention_mask=torch.ones(1, 4, dtype=torch.long)).logits[:, 3:]
        assert torch.allclose(mixed[row:row + 1], want, atol=1e-5)
    # left padding does not move the text's positions: a row alone == the row padded
    lm.select("ok")
    alone = lm(ids[:1]).logits
    padded = lm(torch.tensor([[0, 0, 5, 6, 7, 8]]), attention_mask=torch.tensor([[0, 0, 1, 1, 1, 1]])).logits[:, 2:]
    assert torch.allclose(alone, padded, atol=1e-5)
    assert [n for n, p in lm.named_parameters() if p.requires_grad] == [
        f"peft.prompt_encoder.{n}.embedding.weight" for n in ("good", "ok", "bad")]


def test_sft_prompt_tuning_freezes_the_model_and_saves_standard_peft_adapters(data_dir, tmp_path, tiny_model_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / "soft"
    assert main(["sft", "--data", str(data_dir), "--out", str(out), *SFT]) == 0
    # every base weight bit-identical to the start model's, and no token added
    start = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    saved = AutoModelForCausalLM.from_pretrained(str(out)).state_dict()
    assert saved.keys() == start.keys() and all(torch.equal(saved[k], start[k]) for k in start)
    assert len(load_tokenizer(str(out))) == len(load_tokenizer(tiny_model_path))
    info = json.loads((out / "ambient_model.json").read_text())
    assert info["soft_prompts"] == ["good", "ok", "bad"] and info["goal_tokens"] == []
    # each tier's prompt loads with the standard peft loader and gives our logits
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    ours = load_causal_lm(str(out))
    assert isinstance(ours, SoftPromptLM)
    init = wrap(load_causal_lm(tiny_model_path), load_tokenizer(tiny_model_path), ["good", "ok", "bad"], 3,
                "Write a {name} answer.")
    for tier in ("good", "ok", "bad"):
        adapter = out / SOFT_PROMPT_DIR / tier
        std = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path), str(adapter))
        std.eval()
        with torch.no_grad():
            want = std(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, 3:]
            ours.select(tier)
            got = ours(ids).logits
        assert torch.allclose(got, want, atol=1e-5)
        w = load_file(str(adapter / "adapter_model.safetensors"))["prompt_embeddings"]
        assert w.shape == (3, ours.config.hidden_size)
        # trained: the prompt moved away from its text initialisation
        assert not torch.allclose(w, init.peft.prompt_encoder[tier].embedding.weight)
    losses = [v for s, v in _losses(out)]
    assert all(v == v for v in losses)  # finite numbers were logged


MODELS = ["tiny-random", pytest.param("default", marks=pytest.mark.slow)]  # default: SmolLM2, where users run it


@pytest.mark.parametrize("model", MODELS)
def test_sft_prompt_tuning_resumes_exactly(data_dir, tmp_path, model):
    import ambient_rlhf.train.sft.loop as loop

    full, cut = tmp_path / "full", tmp_path / "cut"
    args = [*SFT[:1], model, *SFT[2:]]
    assert main(["sft", "--data", str(data_dir), "--out", str(full), *args]) == 0
    real = loop.save_checkpoint

    def save_then_interrupt(*a, **kw):  # Ctrl-C right after the step-3 checkpoint
        real(*a, **kw)
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "save_checkpoint", save_then_interrupt)
        assert main(["sft", "--data", str(data_dir), "--out", str(cut), *args]) == 130
    assert (cut / "checkpoints" / "step-3" / "soft_prompt.safetensors").is_file()
    assert main(["sft", "--data", str(data_dir), "--out", str(cut), *args, "--resume"]) == 0
    assert _losses(cut) == _losses(full)  # every train and eval loss, bit for bit
    for tier in ("good", "ok", "bad"):
        a = (full / SOFT_PROMPT_DIR / tier / "adapter_model.safetensors").read_bytes()
        b = (cut / SOFT_PROMPT_DIR / tier / "adapter_model.safetensors").read_bytes()
        assert a == b


RL = ["--algo", "rloo", "--peft", "prompt", "max_steps=4", "batch_size=2", "rloo_k=2", "max_response_tokens=6",
      "missing_eos_score=null", "reward=token-count:0-4095", "save_steps=2", "prompt_tuning.virtual_tokens=2",
      "prompt_tuning.learning_rate=0.05"]


@pytest.mark.parametrize("model", MODELS)
def test_rl_prompt_tuning_trains_only_the_prompt_and_resumes_exactly(data_dir, tmp_path, model):
    import ambient_rlhf.train.rl.setup as setup

    from transformers import AutoModelForCausalLM

    from ambient_rlhf.models.load import resolve_model

    model_path = resolve_model(model)
    full, cut = tmp_path / "full", tmp_path / "cut"
    base = ["rl", "--policy", model_path, "--data", str(data_dir)]
    assert main([*base, "--out", str(full), *RL]) == 0
    real = setup.save_checkpoint

    def save_then_interrupt(*a, **kw):
        real(*a, **kw)
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(setup, "save_checkpoint", save_then_interrupt)
        assert main([*base, "--out", str(cut), *RL]) == 130
    assert main([*base, "--out", str(cut), *RL, "--resume"]) == 0
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("time")} for r in rows]  # noqa: E731
    assert strip(read_jsonl(cut / "metrics.jsonl")) == strip(read_jsonl(full / "metrics.jsonl"))
    # the policy's weights are the reference's, bit for bit; only the prompt was trained
    start = AutoModelForCausalLM.from_pretrained(model_path).state_dict()
    saved = AutoModelForCausalLM.from_pretrained(str(full)).state_dict()
    assert all(torch.equal(saved[k], start[k]) for k in start)
    pol = load_causal_lm(str(full))
    assert isinstance(pol, SoftPromptLM) and pol.names == ["default"]
    kl = [r["objective/kl"] for r in read_jsonl(full / "metrics.jsonl") if "objective/kl" in r]
    assert len(kl) == 4 and any(abs(v) > 0 for v in kl[1:])  # the prompt moved the policy off the reference
    a = (full / SOFT_PROMPT_DIR / "adapter_model.safetensors").read_bytes()
    assert a == (cut / SOFT_PROMPT_DIR / "adapter_model.safetensors").read_bytes()
