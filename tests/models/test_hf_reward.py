"""Reward models saved as transformers ``*ForSequenceClassification`` directories.

Every kind ``ambient rm`` writes (pairwise, tiers, a combination merged onto one backbone)
loads with plain ``AutoModelForSequenceClassification`` with nothing missing, and its
logits, turned into a reward by ``config.ambient_reward``, equal the project's own reward
(``RewardFunction`` over ``load_reward_model``) to 1e-4 (float32 rounding of differently
padded batches, which depends on the CPU's kernels: 1e-5 relative for large rewards) on inputs rendered by
``RewardInputs``; TRL's trainers load a scalar one by path; an earlier-format directory
still loads and converts."""

import json

import pytest
import torch
from helpers import make_data_dir, save_earlier_format

from ambient_rlhf.config import load_config
from ambient_rlhf.models.heads import ScalarHeadModel, convert_reward_dir, reward_from_logits
from ambient_rlhf.models.reward_model import CompositeReward, load_reward_model
from ambient_rlhf.models.reward_inputs import RewardFunction, RewardInputs

LONG_Q = "Should I email the professor again after two weeks without an answer? " * 12  # > 96 tokens
LONG_A = "Yes, a polite follow-up is normal and expected in academia. " * 16  # > 96 tokens
TEXTS = [("Is a stone alive?", "No."), (LONG_Q, "Wait one more week."), ("How long is a thesis?", LONG_A),
         ("Why is the sky blue?", "Rayleigh scattering: short wavelengths scatter more.")]
PROMPTS, RESPONSES = [p for p, _ in TEXTS], [r for _, r in TEXTS]


@pytest.fixture(scope="module")
def rms(tmp_path_factory):
    """Trained tiny reward models: pairwise (full), tiers (top layer), two head-only ones on
    the same frozen backbone (merged when combined), and a combination of different
    backbones (a directory naming its members)."""
    from ambient_rlhf.train.reward import RewardConfig, combine, train_reward

    root = tmp_path_factory.mktemp("hfrm")
    data = make_data_dir(root / "askfoo", n_threads=18, k=3)
    out = {}
    for name, extra in (("pair", ["objective=pairwise", "train_layers=-1", "community_prefix=true"]),
                        ("tiers", ["objective=tiers", "train_layers=1"]),
                        ("head_pair", ["objective=pairwise", "train_layers=0"]),
                        ("head_rank", ["objective=ranking", "train_layers=0"])):
        cfg = load_config(RewardConfig, None, [f"data={data}", "model=tiny-random", f"out={root / name}",
                                               "max_steps=2", "learning_rate=1e-2", "eval_split=", "eval_steps=0",
                                               "max_prompt_tokens=96", "max_response_tokens=96", *extra])
        out[name] = train_reward(cfg)
    out["merged"] = combine([str(out["head_pair"]), str(out["head_rank"])], [1.0, -0.5], root / "merged")
    out["members"] = combine([str(out["pair"]), str(out["tiers"])], [1.0, 0.5], root / "members")
    return out


def project_reward(rm_dir) -> torch.Tensor:
    return RewardFunction(load_reward_model(rm_dir), batch_size=3).texts(PROMPTS, RESPONSES, ["askfoo"] * len(TEXTS))


def hf_reward(rm_dir, **load_kwargs) -> torch.Tensor:
    """The reward through plain transformers: the saved model, inputs from RewardInputs."""
    from transformers import AutoModelForSequenceClassification

    model, info = AutoModelForSequenceClassification.from_pretrained(rm_dir, output_loading_info=True, **load_kwargs)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    batch = RewardInputs.from_pretrained(rm_dir).batch(PROMPTS, RESPONSES, ["askfoo"] * len(TEXTS))
    with torch.no_grad():
        logits = model.eval()(**batch).logits
    return reward_from_logits(logits, model.config.ambient_reward)


@pytest.mark.parametrize("name, labels", [("pair", ["reward"]), ("tiers", ["good", "ok", "bad"]),
                                          ("merged", ["reward"])])
def test_plain_transformers_gives_the_project_reward(rms, name, labels):
    d = rms[name]
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForSequenceClassification"]
    assert [cfg["id2label"][str(i)] for i in range(len(labels))] == labels
    tok = RewardInputs.from_pretrained(d).tok
    assert cfg["pad_token_id"] == tok.pad_token_id != tok.eos_token_id
    assert not (d / "reward_head.safetensors").exists()
    want = project_reward(d)
    assert len(set(round(float(w), 5) for w in want)) == len(want)  # the texts are told apart
    got = hf_reward(d)
    # float32 rounding differs with the batch's padding (ours: batches of 3 sorted by length,
    # transformers: all 4) and with the CPU's kernels, and the normalisation divides by the
    # std of a barely trained tiny model: ~1e-5 apart on some machines; a wrong token or
    # head would be off by far more than 1e-4
    assert got.tolist() == pytest.approx(want.tolist(), rel=1e-5, abs=1e-4)
    if name != "tiers":  # linear: the normalisation is in the weights, the constant in the config
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(d).eval()
        batch = RewardInputs.from_pretrained(d).batch(PROMPTS, RESPONSES, ["askfoo"] * len(TEXTS))
        with torch.no_grad():
            logits = model(**batch).logits
        assert logits.shape == (len(TEXTS), 1)
        got = logits[:, 0] + cfg["ambient_reward"]["offset"]
        assert got.tolist() == pytest.approx(want.tolist(), rel=1e-5, abs=1e-4)


def test_last_token_agrees_with_transformers(rms):
    """transformers reads the rightmost non-pad token, the project the last attended one:
    with right padding, a pad id distinct from EOS, and a response cut before its EOS (the
    long answer), both read the same token."""
    inputs = RewardInputs.from_pretrained(rms["pair"])
    batch = inputs.batch(PROMPTS, RESPONSES)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    pad = inputs.tok.pad_token_id
    last_real = mask.sum(-1) - 1
    rightmost_non_pad = (torch.arange(ids.shape[1]) * (ids != pad)).argmax(-1)
    assert torch.equal(last_real, rightmost_non_pad)
    assert ids[2, last_real[2]] != inputs.tok.eos_token_id  # the cut answer has no EOS
    assert mask.min() == 0  # some padding was needed


def test_merged_combination_is_the_weighted_sum(rms):
    m = load_reward_model(rms["merged"])
    assert isinstance(m, ScalarHeadModel)
    meta = json.loads((rms["merged"] / "reward_config.json").read_text())
    assert [c["weight"] for c in meta["combined_from"]] == [1.0, -0.5]
    assert meta["objective"] == "combined"
    want = 1.0 * project_reward(rms["head_pair"]) - 0.5 * project_reward(rms["head_rank"])
    assert project_reward(rms["merged"]).tolist() == pytest.approx(want.tolist(), rel=1e-6, abs=1e-5)


def test_combination_of_different_backbones_names_its_members(rms):
    d = rms["members"]
    meta = json.loads((d / "reward_config.json").read_text())
    assert meta["kind"] == "composite" and len(meta["members"]) == 2
    assert not (d / "model.safetensors").exists()
    assert isinstance(load_reward_model(d), CompositeReward)
    card = (d / "README.md").read_text()
    assert "members" in card and str(rms["pair"]) in card
    with pytest.raises(Exception, match="combination"):
        RewardInputs.from_pretrained(d)


def test_earlier_format_loads_and_converts(rms, tmp_path, caplog):
    rm = load_reward_model(rms["tiers"])
    old = save_earlier_format(rm, tmp_path / "old", rm.tokenizer)
    want = project_reward(rms["tiers"])
    with caplog.at_level("WARNING"):
        assert project_reward(old).tolist() == pytest.approx(want.tolist(), abs=1e-6)
    assert any("convert_reward_dir" in r.getMessage() for r in caplog.records)
    convert_reward_dir(old)
    assert not (old / "reward_head.safetensors").exists()
    assert json.loads((old / "reward_config.json").read_text())["format"] == "sequence-classification"
    assert hf_reward(old).tolist() == pytest.approx(want.tolist(), rel=1e-5, abs=1e-4)


def test_model_card_says_how_to_load(rms):
    card = (rms["pair"] / "README.md").read_text()
    for part in ("AutoModelForSequenceClassification", "RewardInputs.from_pretrained", "objective `pairwise`",
                 "askfoo", "max_steps", "apply_chat_template"):
        assert part in card, part


def test_chat_template_text_is_the_rendering_plus_a_newline(rms):
    """Where nothing is cut, ``apply_chat_template([user, assistant])`` is the rendering
    followed by one newline (the end-of-turn token closes both): the documented difference."""
    inputs = RewardInputs.from_pretrained(rms["tiers"])  # no community prefix
    tok = inputs.tok
    q, a = TEXTS[3]
    chat = tok.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                   tokenize=False)
    assert chat == inputs.text(q, a) + "\n"
    assert tok(chat, add_special_tokens=False)["input_ids"][:-1] == inputs.encode(q, a).input_ids


def test_trl_loads_the_reward_model_by_path(rms, tmp_path):
    trl = pytest.importorskip("trl", reason="TRL is not installed (the `test` extra): pip install 'trl>=1.16'")
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification

    from ambient_rlhf.models.load import resolve_model

    d = rms["pair"]
    # TRL's own call (GRPOTrainer / RLOOTrainer with reward_funcs=path): num_labels=1
    model, info = AutoModelForSequenceClassification.from_pretrained(d, num_labels=1, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"] and not info["unexpected_keys"], info
    ds = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in PROMPTS[:2]]})
    # bf16=False: TRL's default (bf16) runs the reward model under bf16 autocast, which
    # rounds rewards to about 3 significant digits
    args = trl.GRPOConfig(output_dir=str(tmp_path / "grpo"), per_device_train_batch_size=2, num_generations=2,
                          max_completion_length=4, report_to=[], use_cpu=True, max_steps=1, bf16=False)
    trainer = trl.GRPOTrainer(model=resolve_model("tiny-random"), reward_funcs=str(d), args=args, train_dataset=ds)
    loaded, tok = trainer.reward_funcs[0], trainer.reward_processing_classes[0]
    assert torch.equal(loaded.score.weight, model.score.weight)
    rloo = trl.RLOOTrainer(model=resolve_model("tiny-random"), reward_funcs=str(d), train_dataset=ds,
                           args=trl.RLOOConfig(output_dir=str(tmp_path / "rloo"), per_device_train_batch_size=2,
                                               num_generations=2, max_completion_length=4, report_to=[],
                                               use_cpu=True, max_steps=1, bf16=False))
    assert torch.equal(rloo.reward_funcs[0].score.weight, model.score.weight)
    assert tok.pad_token_id == loaded.config.pad_token_id != tok.eos_token_id
    # scored as TRL scores text (tokenised, padded right), the rendered text gives the project's reward
    inputs = RewardInputs.from_pretrained(d)
    texts = [inputs.text(p, r, "askfoo") for p, r in TEXTS]
    enc = tok(text=texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
    with torch.no_grad():
        got = loaded(**enc).logits[:, 0] + loaded.config.ambient_reward["offset"]
    assert got.tolist() == pytest.approx(project_reward(d).tolist(), rel=1e-5, abs=1e-4)
    # a tiers model has three logits: TRL's num_labels=1 refuses it loudly (not a silent random head)
    with pytest.raises(Exception, match="mismatch"):
        AutoModelForSequenceClassification.from_pretrained(rms["tiers"], num_labels=1)


@pytest.mark.parametrize("name", ["tiers", "members"])
def test_trl_reward_function_scores_as_the_project(rms, name):
    """Kinds TRL cannot load by path (three logits, a combination) go in as a function."""
    from ambient_rlhf.models.reward_model import trl_reward_function

    fn = trl_reward_function(rms[name], batch_size=3)
    assert fn.__name__ == name
    tok = RewardInputs.from_pretrained(rms["pair"]).tok
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS]
    communities = ["askfoo"] * len(TEXTS)
    want = project_reward(rms[name])
    assert fn(prompts=prompts, completions=RESPONSES, community=communities) == pytest.approx(want.tolist(), abs=1e-6)
    # the policy's ids, EOS last: the same rewards (the long answer is cut, as in rendering)
    ids = [tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for r in RESPONSES]
    got = fn(prompts=prompts, completions=[[{"role": "assistant", "content": r}] for r in RESPONSES],
             completion_ids=ids, community=communities)
    assert got == pytest.approx(want.tolist(), abs=1e-6)


def test_untied_output_embeddings_travel_beside_the_model(tmp_path):
    """A backbone whose LM head is its own tensor: transformers reads model.safetensors
    (nothing unexpected), the project's loader also gets the LM head back."""
    from transformers import AutoModelForSequenceClassification, LlamaForCausalLM

    from ambient_rlhf.models.load import tiny_random_model

    lm, tok = tiny_random_model()
    cfg = lm.config
    cfg.tie_word_embeddings = False
    torch.manual_seed(0)
    untied = LlamaForCausalLM(cfg)
    rm = ScalarHeadModel(untied)
    rm.set_normalization(0.5, 2.0)
    rm.save_pretrained(tmp_path / "rm", tok)
    assert (tmp_path / "rm" / "lm_head.safetensors").is_file()
    _, info = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    back = load_reward_model(tmp_path / "rm")
    assert torch.equal(back.lm.lm_head.weight, untied.lm_head.weight)
    assert not torch.equal(back.lm.lm_head.weight, back.lm.model.embed_tokens.weight)
    ids = torch.tensor([[5, 6, 7, tok.eos_token_id]])
    with torch.no_grad():
        assert back.reward(ids, torch.ones_like(ids)).item() == pytest.approx(
            rm.reward(ids, torch.ones_like(ids)).item(), abs=1e-5)
