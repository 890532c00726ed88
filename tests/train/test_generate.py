"""Generation: left-padded batches equal one-by-one decoding, EOS stops, seeds, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from ambient_rlhf import AmbientError
from ambient_rlhf.cli import main
from ambient_rlhf.models.load import load_causal_lm, load_tokenizer
from ambient_rlhf.models.tokenize import encode_prompt
from ambient_rlhf.train.generate import generate

PROMPTS = ["Why is the sky blue?", "Hi", "Explain the difference between a thesis and a dissertation, briefly."]


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    return load_causal_lm(tiny_model_path), load_tokenizer(tiny_model_path, padding_side="left")


def test_batched_greedy_equals_one_by_one(tiny):
    # prompts of different lengths share a left-padded batch; greedy decoding must not see
    # the padding (mask + position ids), so each equals the prompt decoded alone
    batch = generate(tiny, PROMPTS, max_new_tokens=6, temperature=0.0, batch_size=3, return_ids=True)
    alone = [generate(tiny, [p], max_new_tokens=6, temperature=0.0, return_ids=True)[0] for p in PROMPTS]
    assert batch == alone
    assert all(len(t) == 6 for t in batch)  # a random model never picks EOS in 6 greedy steps
    texts = generate(tiny, PROMPTS, max_new_tokens=6, temperature=0.0, batch_size=3)
    assert texts == [tiny[1].decode(t, skip_special_tokens=True).strip() for t in batch]


def test_greedy_matches_a_hand_rolled_loop(tiny):
    # reference: argmax decoding without the KV cache, one token at a time
    lm, tok = tiny
    ids, _ = encode_prompt(tok, PROMPTS[0], 256)
    x = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(5):
            nxt = lm(x).logits[0, -1].argmax()
            x = torch.cat([x, nxt.view(1, 1)], dim=1)
    assert generate(tiny, [PROMPTS[0]], max_new_tokens=5, temperature=0.0, return_ids=True) == [x[0, len(ids):].tolist()]


def test_stops_at_eos(tiny):
    import copy

    lm, tok = tiny
    # sample 8 tokens; then declare the 4th of them the EOS token: with the same seed the
    # same draws happen, so the output must end right before its first occurrence
    ref = generate(tiny, [PROMPTS[0]], max_new_tokens=8, temperature=1.0, seed=3, return_ids=True)[0]
    assert len(ref) == 8
    tok2 = copy.deepcopy(tok)
    tok2.eos_token = tok.convert_ids_to_tokens(ref[3])
    assert tok2.eos_token_id == ref[3]
    got = generate((lm, tok2), [PROMPTS[0]], max_new_tokens=8, temperature=1.0, seed=3, return_ids=True)[0]
    assert got == ref[: ref.index(ref[3])]


def test_seeded_sampling_is_reproducible_and_leaves_global_rng(tiny):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = generate(tiny, PROMPTS, max_new_tokens=6, temperature=1.0, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    b = generate(tiny, PROMPTS, max_new_tokens=6, temperature=1.0, seed=7)
    c = generate(tiny, PROMPTS, max_new_tokens=6, temperature=1.0, seed=8)
    assert a == b and a != c


def test_goal_needs_goal_tokens(tiny):
    with pytest.raises(AmbientError, match="no goal tokens"):
        generate(tiny, ["x"], goal="good")


def test_cli_prompt_file_to_jsonl(tmp_path, tiny_model_path, capsys):
    pf = tmp_path / "prompts.jsonl"
    pf.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    out = tmp_path / "gen.jsonl"
    assert main(["generate", "--model", tiny_model_path, "--prompts", str(pf), "--out", str(out),
                 "--max-new-tokens", "3", "--temperature", "0"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == PROMPTS
    assert main(["generate", "--model", tiny_model_path, "Hi", "--max-new-tokens", "3", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.strip() == rows[1]["completion"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\nnot json\n')
    assert main(["generate", "--model", tiny_model_path, "--prompts", str(bad)]) == 2
    assert f"{bad}:2: invalid JSON" in capsys.readouterr().err


def test_goal_tokens_are_never_generated(tiny_model_path):
    from ambient_rlhf.models.tokenize import add_goal_tokens, goal_token_ids

    lm, tok = load_causal_lm(tiny_model_path), load_tokenizer(tiny_model_path, padding_side="left")
    add_goal_tokens(tok, lm)
    ref = generate((lm, tok), [PROMPTS[0]], max_new_tokens=4, temperature=0.0, return_ids=True)[0]
    gid = goal_token_ids(tok)[0]
    emb = lm.get_input_embeddings().weight  # tied with the head in the tiny Llama
    emb.data[gid] = emb.data[ref[0]] * 3  # its logit now beats the first greedy pick ...
    ids, _ = encode_prompt(tok, PROMPTS[0], 256)
    with torch.no_grad():
        assert lm(torch.tensor([ids])).logits[0, -1].argmax().item() == gid
    # ... but it is suppressed; the prompt has no goal token, so all else is unchanged
    assert generate((lm, tok), [PROMPTS[0]], max_new_tokens=4, temperature=0.0, return_ids=True)[0] == ref
