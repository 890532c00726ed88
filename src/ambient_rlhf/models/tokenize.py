"""Prompt templates and tokenisation with left-truncated prompts.

Every stage builds model input the same way, so that SFT, the reward model and the
policy see identical text:

    prompt_text = render_prompt(tok, prompt, template, goal)   # ends where the answer starts
    full        = prompt_text + response + eos

* ``template="auto"``: the tokenizer's chat template when it has one (ChatML for SmolLM2),
  else ``plain``.  ``chat`` forces the chat template, ``plain`` the
  ``Prompt: ...\\nResponse: `` form.
* ``goal``: a quality tier; its control token (``<|tier:good|>``...) is placed between
  the user's turn and the answer header, inside the prompt part, so it is conditioned
  on and never predicted.
* Prompts are truncated from the left (the end of a question is nearest the answer),
  responses from the right; :func:`encode_pair` reports whether either was cut.
"""

from __future__ import annotations

from dataclasses import dataclass

from ambient_rlhf import AmbientError
from ambient_rlhf.data.schema import TIERS


class PromptBudgetError(AmbientError, ValueError):
    """``max_prompt_tokens`` cannot hold the prompt template (a user-facing config error)."""

PLAIN_TEMPLATE = "Prompt: {prompt}\nResponse: "


def goal_token(tier: str) -> str:
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; expected one of {TIERS}")
    return f"<|tier:{tier}|>"


GOAL_TOKENS = tuple(goal_token(t) for t in TIERS)


def add_goal_tokens(tokenizer, model=None) -> int:
    """Add the tier control tokens to the tokenizer (and grow the model's embeddings).

    Each new input-embedding row starts at the mean embedding of its tier's word
    (``good``, ``ok``, ``bad``): rows drawn around the vocabulary mean (transformers'
    ``mean_resizing``) are nearly identical, so a short run could not tell the tiers
    apart; the words give distinct, meaningful starting points.  Goal tokens are never
    labels, and :func:`ambient_rlhf.train.generate.generate` never samples them.

    Returns the number of tokens added (0 when they already exist)."""
    specials = {"additional_special_tokens": list(GOAL_TOKENS)}
    if _supports_replace(tokenizer):
        added = tokenizer.add_special_tokens(specials, replace_extra_special_tokens=False)
    else:
        added = tokenizer.add_special_tokens(specials)
    if model is not None and added:
        import torch

        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        emb = model.get_input_embeddings().weight
        with torch.no_grad():
            for tier in TIERS:
                word_ids = tokenizer(tier, add_special_tokens=False)["input_ids"]
                emb[tokenizer.convert_tokens_to_ids(goal_token(tier))] = emb[word_ids].mean(0)
    return added


def goal_token_ids(tokenizer) -> list[int]:
    """Ids of the goal tokens ([] when the tokenizer has none)."""
    return tokenizer.convert_tokens_to_ids(list(GOAL_TOKENS)) if has_goal_tokens(tokenizer) else []


def _supports_replace(tokenizer) -> bool:
    import inspect

    try:
        return "replace_extra_special_tokens" in inspect.signature(tokenizer.add_special_tokens).parameters
    except (TypeError, ValueError):
        return False


def has_goal_tokens(tokenizer) -> bool:
    vocab = tokenizer.get_vocab()
    return all(t in vocab for t in GOAL_TOKENS)


def resolve_template(tokenizer, template: str = "auto") -> str:
    if template not in ("auto", "chat", "plain"):
        raise ValueError(f"template must be auto, chat or plain, not {template!r}")
    if template == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "plain"
    if template == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ValueError("template=chat but the tokenizer has no chat template")
    return template


def render_prompt(tokenizer, prompt: str, template: str = "auto", goal: str | None = None) -> str:
    """The text that precedes the answer (the answer is appended directly after it).

    A goal token goes between the user's turn and the answer header
    (``...<|im_end|>\n<|tier:good|><|im_start|>assistant\n``; plain:
    ``Prompt: ...\n<|tier:good|>Response: ``), so the answer still starts right after
    the header the model knows; placed after the header, a new token derails the first
    words of a pretrained chat model until it has been trained for a while."""
    kind = resolve_template(tokenizer, template)
    tag = goal_token(goal) if goal is not None else ""
    if kind == "chat":
        msgs = [{"role": "user", "content": prompt}]
        with_header = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        if not tag:
            return with_header
        turn = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
        if with_header.startswith(turn):
            return turn + tag + with_header[len(turn):]
        return with_header + tag  # a template whose header does not simply follow the turn
    head, sep, tail = PLAIN_TEMPLATE.rpartition("Response: ")
    return head.format(prompt=prompt) + tag + sep + tail


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def leading_bos(tokenizer) -> list[int]:
    """``[bos_id]`` when the tokenizer starts every text with its BOS token (Gemma, Llama
    base models: their states are off without it), else ``[]`` (SmolLM2, GPT-2 style)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return []
    ids = tokenizer("a")["input_ids"]
    return [bos] if len(ids) > len(_ids(tokenizer, "a")) and ids[0] == bos else []


def _prompt_ids(tokenizer, text: str, lead: list[int]) -> list[int]:
    """A rendered prompt's ids: the start of a sequence, so it gets the BOS the model was
    trained with (``lead``) unless the template's text already begins with it."""
    ids = _ids(tokenizer, text)
    return ids if not lead or ids[:1] == lead else lead + ids


def encode_prompt(tokenizer, prompt: str, max_tokens: int, template: str = "auto", goal: str | None = None) -> tuple[list[int], bool]:
    """Token ids of the rendered prompt, the prompt text cut from the left to fit.

    Returns ``(ids, truncated)``.  The template's own tokens (system header, answer
    header, goal token) are kept; only the user's text is shortened."""
    lead = leading_bos(tokenizer)
    ids = _prompt_ids(tokenizer, render_prompt(tokenizer, prompt, template, goal), lead)
    if len(ids) <= max_tokens:
        return ids, False
    overhead = len(_prompt_ids(tokenizer, render_prompt(tokenizer, "", template, goal), lead))
    if overhead >= max_tokens:
        raise PromptBudgetError(f"max_prompt_tokens={max_tokens} leaves no room for the prompt: the template alone "
                         f"takes {overhead} tokens; raise max_prompt_tokens")
    text_ids = _ids(tokenizer, prompt)
    budget = max_tokens - overhead
    while True:
        cut = tokenizer.decode(text_ids[-budget:], skip_special_tokens=False)
        ids = _prompt_ids(tokenizer, render_prompt(tokenizer, cut, template, goal), lead)
        # re-tokenising at the seam can add a token or two; shrink the text, never the template
        if len(ids) <= max_tokens or budget <= 1:
            break
        budget -= len(ids) - max_tokens
        budget = max(budget, 1)
    if len(ids) > max_tokens:
        raise PromptBudgetError(f"max_prompt_tokens={max_tokens} cannot hold the template and one token of text")
    return ids, True


@dataclass
class Encoded:
    input_ids: list[int]
    """prompt ids followed by response ids (EOS included when it fits)"""
    prompt_len: int
    """number of leading prompt tokens (masked out of the loss)"""
    prompt_truncated: bool
    response_truncated: bool


def encode_pair(
    tokenizer,
    prompt: str,
    response: str,
    max_prompt_tokens: int,
    max_response_tokens: int,
    template: str = "auto",
    goal: str | None = None,
    add_eos: bool = True,
) -> Encoded:
    """Prompt (left-truncated) + response (right-truncated) + EOS.

    A response cut short gets no EOS, so the model is not taught to stop mid-answer."""
    p_ids, p_cut = encode_prompt(tokenizer, prompt, max_prompt_tokens, template, goal)
    r_ids = _ids(tokenizer, response)
    eos = [tokenizer.eos_token_id] if add_eos else []
    r_cut = len(r_ids) + len(eos) > max_response_tokens
    r_ids = r_ids[:max_response_tokens] if r_cut else r_ids + eos
    return Encoded(p_ids + r_ids, len(p_ids), p_cut, r_cut)


def encode_pairs(
    tokenizer,
    rows: list[tuple[str, str, str | None]],
    max_prompt_tokens: int,
    max_response_tokens: int,
    template: str = "auto",
    add_eos: bool = True,
) -> list[Encoded]:
    """:func:`encode_pair` over many ``(prompt, response, goal)`` rows, the same result,
    faster: each distinct (prompt, goal) is rendered once (a thread's responses share
    their prompt) and responses are tokenised in one batched call."""
    cache: dict[tuple[str, str | None], tuple[list[int], bool]] = {}
    responses = [r for _, r, _ in rows]
    r_all = tokenizer(responses, add_special_tokens=False)["input_ids"] if responses else []
    eos = [tokenizer.eos_token_id] if add_eos else []
    out = []
    for (prompt, _, goal), r_ids in zip(rows, r_all):
        key = (prompt, goal)
        if key not in cache:
            cache[key] = encode_prompt(tokenizer, prompt, max_prompt_tokens, template, goal)
        p_ids, p_cut = cache[key]
        r_cut = len(r_ids) + len(eos) > max_response_tokens
        r_ids = r_ids[:max_response_tokens] if r_cut else r_ids + eos
        out.append(Encoded(p_ids + r_ids, len(p_ids), p_cut, r_cut))
    return out


def pad_batch(seqs, pad_id: int | float, side: str = "right", label_masks: list[list[int]] | None = None):
    """Pad sequences into ``(input_ids, attention_mask)``, (B, T) each: the one padding
    helper of the package.

    ``seqs``: lists of token ids (-> a LongTensor), or tensors of shape (len_i, ...) (->
    (B, T, ...) of their dtype, e.g. cached hidden states (len_i, d) -> (B, T, d)).
    ``pad_id`` fills the padding; ``side`` is ``"right"`` (real tokens first: training,
    reward models) or ``"left"`` (real tokens last: prompts to generate from).  The
    attention mask is a LongTensor, 1 at real tokens.  Tensors stay on their device;
    lists give CPU tensors.

    With ``label_masks`` (1 = token counts in the loss) also returns ``labels``: the ids
    where the mask is 1 and -100 elsewhere (padding included)."""
    import torch

    if side not in ("right", "left"):
        raise ValueError(f"pad_batch: side must be 'right' or 'left', got {side!r}")
    T = max(len(s) for s in seqs)
    B = len(seqs)
    first = seqs[0]
    if isinstance(first, torch.Tensor):
        ids = first.new_full((B, T) + tuple(first.shape[1:]), pad_id)
    else:
        ids = torch.full((B, T), pad_id, dtype=torch.long)
    att = torch.zeros((B, T), dtype=torch.long, device=ids.device)
    labels = torch.full((B, T), -100, dtype=torch.long) if label_masks is not None else None
    for i, s in enumerate(seqs):
        n = len(s)
        sl = slice(0, n) if side == "right" else slice(T - n, T)
        ids[i, sl] = s if isinstance(s, torch.Tensor) else torch.tensor(s, dtype=torch.long)
        att[i, sl] = 1
        if labels is not None:
            m = torch.tensor(label_masks[i], dtype=torch.bool)
            lab = torch.tensor(s, dtype=torch.long)
            lab[~m] = -100
            labels[i, sl] = lab
    if labels is not None:
        return ids, att, labels
    return ids, att
