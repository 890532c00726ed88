"""Tokenisation contracts: pad != EOS, templates, goal tokens, truncation sides."""

from __future__ import annotations

import pytest
import torch

from ambient_rlhf.models.load import load_tokenizer
from ambient_rlhf.models.tokenize import (GOAL_TOKENS, add_goal_tokens, encode_pair, encode_pairs, encode_prompt, has_goal_tokens,
                                          pad_batch, render_prompt)


@pytest.fixture(scope="module")
def tok(tiny_model_path):
    return load_tokenizer(tiny_model_path)


def test_pad_is_not_eos(tok):
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    assert (tok.pad_token, tok.eos_token) == ("<|endoftext|>", "<|im_end|>")


def test_plain_template_and_goal_token(tok):
    assert render_prompt(tok, "Why?", template="plain") == "Prompt: Why?\nResponse: "
    assert render_prompt(tok, "Why?", template="plain", goal="bad") == "Prompt: Why?\n<|tier:bad|>Response: "
    chat = render_prompt(tok, "Why?", goal="good")
    assert chat.endswith("Why?<|im_end|>\n<|tier:good|><|im_start|>assistant\n")
    assert chat.replace("<|tier:good|>", "") == render_prompt(tok, "Why?")


def test_goal_tokens_are_single_tokens_initialised_from_their_words(tiny_model_path):
    import torch

    from ambient_rlhf.models.load import load_causal_lm

    t, m = load_tokenizer(tiny_model_path), load_causal_lm(tiny_model_path)
    assert not has_goal_tokens(t)
    assert add_goal_tokens(t, m) == 3 and add_goal_tokens(t, m) == 0
    ids = [t(g, add_special_tokens=False)["input_ids"] for g in GOAL_TOKENS]
    assert ids == [[len(t) - 3], [len(t) - 2], [len(t) - 1]]
    emb = m.get_input_embeddings().weight
    assert emb.shape[0] == len(t)
    for (gid,), word in zip(ids, ("good", "ok", "bad")):
        w = t(word, add_special_tokens=False)["input_ids"]
        assert torch.equal(emb[gid], emb[w].mean(0))


def test_prompt_cut_from_the_left_keeps_the_template(tok):
    words = " ".join(f"w{i}" for i in range(200))
    full, cut_flag = encode_prompt(tok, words, 10_000)
    assert not cut_flag
    overhead = len(encode_prompt(tok, "", 10_000)[0])
    ids, cut_flag = encode_prompt(tok, words, overhead + 10)
    assert cut_flag and len(ids) <= overhead + 10
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    assert "w199" in text and "w0 " not in text  # the end of the question survives
    with pytest.raises(ValueError, match="template alone"):
        encode_prompt(tok, words, overhead)


def test_response_cut_from_the_right_without_eos(tok):
    r_ids = tok("alpha beta gamma", add_special_tokens=False)["input_ids"]  # 3 tokens
    assert len(r_ids) == 3
    whole = encode_pair(tok, "q", "alpha beta gamma", 100, 4, template="plain")
    assert whole.input_ids[whole.prompt_len:] == r_ids + [tok.eos_token_id] and not whole.response_truncated
    cut = encode_pair(tok, "q", "alpha beta gamma", 100, 3, template="plain")
    # 3 tokens + EOS do not fit in 3: the response is cut and gets no EOS
    assert cut.input_ids[cut.prompt_len:] == r_ids and cut.response_truncated


def test_pad_batch_sides():
    ids, att, lab = pad_batch([[1, 2, 3], [4]], pad_id=0, side="left", label_masks=[[0, 1, 1], [1]])
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert att.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert lab.tolist() == [[-100, 2, 3], [-100, -100, 4]]
    ids, att = pad_batch([[1, 2, 3], [4]], pad_id=7, side="right")
    assert ids.tolist() == [[1, 2, 3], [4, 7, 7]]
    assert att.tolist() == [[1, 1, 1], [1, 0, 0]]
    with pytest.raises(ValueError):
        pad_batch([[1]], 0, side="middle")


def test_pad_batch_tensors_keep_trailing_dims_and_dtype():
    # hidden states (len_i, d=2): (2, 2) and (1, 2) -> (B=2, T=2, d=2), right-padded with 0
    h = [torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[5.0, 6.0]])]
    out, att = pad_batch(h, 0, "right")
    assert out.dtype == torch.float32 and out.tolist() == [[[1, 2], [3, 4]], [[5, 6], [0, 0]]]
    assert att.dtype == torch.long and att.tolist() == [[1, 1], [1, 0]]
    ids, att = pad_batch([torch.tensor([9, 8]), torch.tensor([5])], 0, "left")
    assert ids.dtype == torch.long and ids.tolist() == [[9, 8], [0, 5]] and att.tolist() == [[1, 1], [0, 1]]


def test_encode_pairs_equals_encode_pair(tok):
    rows = [("a question " * 30, "short answer", None), ("a question " * 30, "another " * 40, "good"),
            ("q2", "x", "bad")]
    many = encode_pairs(tok, rows, 40, 20)
    one = [encode_pair(tok, p, r, 40, 20, goal=g) for p, r, g in rows]
    assert many == one
    assert many[0].prompt_truncated and many[1].response_truncated and not many[2].response_truncated


def test_prompts_start_with_bos_when_the_tokenizer_adds_one(tiny_model_path):
    """Base models whose tokenizer starts every text with BOS (Gemma, Llama) must see it in
    the plain template too; SmolLM2's tokenizer adds none and its ids stay as they were."""
    from transformers import AutoTokenizer

    plain = load_tokenizer(tiny_model_path)
    assert plain("a")["input_ids"] == plain("a", add_special_tokens=False)["input_ids"]  # no BOS of its own
    with_bos = AutoTokenizer.from_pretrained(tiny_model_path, add_bos_token=True, bos_token="<|endoftext|>")
    bos = with_bos.convert_tokens_to_ids("<|endoftext|>")
    text_ids = plain("Prompt: Why?\nResponse: ", add_special_tokens=False)["input_ids"]
    assert encode_prompt(plain, "Why?", 64, "plain") == (text_ids, False)
    assert encode_prompt(with_bos, "Why?", 64, "plain") == ([bos] + text_ids, False)
    # cut to the budget, BOS included and kept first
    ids, cut = encode_prompt(with_bos, "Why? " * 30, 12, "plain")
    assert cut and len(ids) == 12 and ids[0] == bos and ids.count(bos) == 1
    # a template whose text already starts with the BOS token gets no second one
    with_bos.chat_template = "<|endoftext|>{% for m in messages %}{{ m['content'] }}{% endfor %}A: "
    ids, _ = encode_prompt(with_bos, "Why?", 64, "chat")
    assert ids[0] == bos and ids[1] != bos
