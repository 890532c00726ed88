"""Model cards: the ``README.md`` of every model directory the stages write.

Written from the directory's own files, so the card says what the files say:
``manifest.json`` (command, config, inputs, counts), ``reward_config.json`` and
``eval.json`` (reward models), ``config.json``.  :func:`ambient_rlhf.io.write_manifest`
calls :func:`write_model_card` for the model stages (``sft``, ``rm``, ``rm-combine``,
``rl``) right after the manifest, which each stage writes last, so a card always
describes a finished model.  Standard library only (a foundation module).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

CARD_FILE = "README.md"
MODEL_STAGES = ("sft", "rm", "rm-combine", "rl", "dpo")

_WHAT = {
    "sft": "a causal language model fine-tuned on community answers (behaviour cloning, `ambient sft`)",
    "rl": "a causal language model optimised against a reward model (`ambient rl`)",
    "dpo": "a causal language model fitted to preference pairs by direct preference optimisation (`ambient dpo`)",
    "rm": "a reward model (`ambient rm`)",
    "rm-combine": "a weighted combination of reward models (`ambient rm combine`)",
}


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _ci(v: Any) -> str:
    """``0.593 [0.511, 0.663] (n=59)`` from a bootstrap_ci dict."""
    if not isinstance(v, dict) or "value" not in v:
        return "n/a"
    lo, hi = v.get("ci_low", v.get("low")), v.get("ci_high", v.get("high"))
    try:
        s = f"{float(v['value']):.3f}"
        if lo is not None and hi is not None:
            s += f" [{float(lo):.3f}, {float(hi):.3f}]"
    except (TypeError, ValueError):
        return "n/a"
    return s


def _command(argv: list[Any]) -> str:
    """The command line as typed: ``ambient ...`` for the CLI (``python -m`` records the
    path of ``ambient_rlhf/cli/__main__.py``)."""
    args = [str(a) for a in argv]
    cli = "ambient_rlhf/cli/__main__.py"
    if args and (Path(args[0]).name == "ambient" or args[0].replace("\\", "/").endswith(cli)):
        args[0] = "ambient"
    return shlex.join(args) if args else "?"


def _eval_lines(ev: dict[str, Any]) -> list[str]:
    """The headline of an ``eval.json`` of ``ambient rm`` / ``rm eval`` (one community)."""
    b = ev.get("baselines", {})
    lines = [f"- split `{ev.get('split')}`: {ev.get('n_pairs')} pairs in {ev.get('n_threads')} threads "
             "(95% intervals resample threads)",
             f"- pairwise accuracy: {_ci(ev.get('accuracy'))}; longer answer wins: {_ci(b.get('longer_wins'))}"]
    if "loglik_mean" in b:
        lines.append(f"- log-likelihood per token: {_ci(b.get('loglik_mean'))}")
    ps = ev.get("preferred_shorter") or {}
    if ps:
        lines.append(f"- where the preferred answer is the shorter (n={ps.get('n')}): {_ci(ps.get('accuracy'))}")
    bl = ev.get("beyond_length") or {}
    if bl:
        gain = (bl.get("gain") or {}).get("log_loss")
        lines.append(f"- beyond length: log-loss gain {_ci(gain)}, verdict `{bl.get('verdict')}`")
    lc = (ev.get("length_correlation") or {}).get("spearman")
    if isinstance(lc, (int, float)):
        lines.append(f"- Spearman(reward, response length): {lc:.2f}")
    return lines


def _load_lines(stage: str, out: Path, rcfg: dict[str, Any] | None, files: Path | None = None) -> list[str]:
    d = str(out)
    if stage in ("sft", "rl", "dpo"):
        lines = ["```python",
                 "from transformers import AutoModelForCausalLM, AutoTokenizer",
                 f"tok = AutoTokenizer.from_pretrained({d!r})",
                 f"model = AutoModelForCausalLM.from_pretrained({d!r})",
                 "```"]
        if files is not None and (files / "adapter" / "adapter_config.json").is_file():
            base = (_read(files / "adapter" / "adapter_config.json") or {}).get("base_model_name_or_path")
            lines += ["", f"The LoRA adapter alone, on its base `{base}`: "
                      f"`peft.AutoPeftModelForCausalLM.from_pretrained({str(out / 'adapter')!r})`."]
        return lines
    ambient_loader = ["```python",
                      "from ambient_rlhf.models.reward_model import load_reward_model",
                      "from ambient_rlhf.models.reward_inputs import RewardFunction",
                      f"fn = RewardFunction(load_reward_model({d!r}))  # fn.texts(prompts, responses, communities)",
                      "```",
                      ""]
    if rcfg is not None and "members" in rcfg:
        return ambient_loader + [
            "The members are separate `*ForSequenceClassification` directories (listed in "
            "`reward_config.json`); transformers loads each of them on its own."]
    if (rcfg or {}).get("pooling", "last") == "mean":
        return ambient_loader + [
            "This head reads the **mean of the response tokens' hidden states** (`pooling: mean`), not "
            "the last token that transformers' `AutoModelForSequenceClassification` reads: score it "
            "through ambient-rlhf as above, or run the model's body, average the final-norm states of "
            "the response tokens and apply `score.weight` and `ambient_reward.offset` to that."]
    kind = (rcfg or {}).get("kind", "scalar")
    last = ("reward = logits[:, 0] + rm.config.ambient_reward['offset']" if kind == "scalar" else
            "reward = reward_from_logits(logits, rm.config.ambient_reward)  # expected tier value, normalised")
    lines = ["```python",
             "from transformers import AutoModelForSequenceClassification; "
             "from ambient_rlhf.models.reward_inputs import RewardInputs",
             f"rm, inputs = AutoModelForSequenceClassification.from_pretrained({d!r}), "
             f"RewardInputs.from_pretrained({d!r})",
             f"logits = rm(**inputs.batch(prompts, responses)).logits; {last}",
             "```"]
    if kind != "scalar":
        lines.append("(`reward_from_logits` is in `ambient_rlhf.models.heads`.)")
    return lines


def _input_lines(rcfg: dict[str, Any]) -> list[str]:
    chat = ("With the chat template that is the text of `tokenizer.apply_chat_template([user, assistant])` "
            "**without** the newline after the last end-of-turn token. " if rcfg.get("template") == "chat" else
            "The plain template is not the tokenizer's chat template. ")
    return [
        "## Input",
        "",
        f"The model reads `render_prompt(prompt)` (template `{rcfg.get('template')}`"
        f"{', prefixed with `[community] `' if rcfg.get('community_prefix') else ''}; at most "
        f"{rcfg.get('max_prompt_tokens')} tokens, the prompt text cut from the left) followed by the "
        f"response and EOS (at most {rcfg.get('max_response_tokens')} tokens with EOS, cut from the right, "
        f"then without EOS), padded on the right. {chat}Render it exactly with "
        "`ambient_rlhf.models.reward_inputs.RewardInputs.from_pretrained(DIR)` (`.encode`, `.batch`, "
        "`.text`); text from `apply_chat_template` scores differently (docs/reward.md, "
        "\"Scoring chat-template text\").",
        "",
        "transformers reads the reward at the last token that is not `pad_token_id`; the "
        "pad token differs from EOS, so pad on the right and never leave a pad id at the end "
        "of a real sequence.",
    ]


def model_card(out: str | Path) -> str:
    """The card's Markdown for the model directory ``out`` (which holds its manifest)."""
    out = Path(out)
    man = _read(out / "manifest.json") or {}
    stage = str(man.get("stage", "?"))
    rcfg = _read(out / "reward_config.json")
    cfg = man.get("config") or {}
    files, out = out, Path(cfg.get("out") or out)  # a stage may write into a temporary dir it renames
    lines = [f"# {out.name}", "", f"This directory is {_WHAT.get(stage, stage)}, written by ambient-rlhf "
             f"{(man.get('versions') or {}).get('ambient_rlhf', '')} on {man.get('created', '?')}.", ""]
    if rcfg is not None and "members" not in rcfg:
        lines += [f"Kind `{rcfg.get('kind')}`, objective `{rcfg.get('objective', '?')}`; a standard "
                  "`*ForSequenceClassification` directory (`config.json` + `model.safetensors` with the "
                  "reward head as `score`, the normalisation folded in where it is linear; "
                  "`config.json`'s `ambient_reward` says how the logits become the reward).", ""]
        if rcfg.get("combined_from"):
            parts = [f"{m.get('weight')} x `{m.get('path')}` ({m.get('objective')})" for m in rcfg["combined_from"]]
            lines += ["A merged combination: " + ", ".join(parts) + ".", ""]
    lines += ["## Load it", "", *_load_lines(stage, out, rcfg, files), ""]
    if rcfg is not None and "members" not in rcfg:
        lines += [*_input_lines(rcfg), ""]
    lines += ["## Trained on", ""]
    if rcfg is not None and "members" in rcfg:
        for m, w in zip(rcfg["members"], rcfg.get("weights", [])):
            lines.append(f"- weight {w}: `{m}`")
    for i in man.get("inputs") or []:
        community = (_read(Path(str(i.get("path"))) / "manifest.json") or {}).get("community")
        lines.append(f"- input `{i.get('path')}`" + (f" (community {community})" if community else "")
                     + (" (missing)" if i.get("missing") else ""))
    if rcfg is not None and rcfg.get("communities"):
        lines.append(f"- communities: {', '.join(map(str, rcfg['communities']))}"
                     + (f"; half `{rcfg['train_half']}`" if rcfg.get("train_half") else ""))
    counts = man.get("counts") or {}
    if counts:
        lines.append("- counts: " + ", ".join(f"{k} {v}" for k, v in counts.items()
                                              if isinstance(v, (int, float, str))))
    lines += ["", "## Command", "", "```", _command(man.get("command") or []), "```", "",
              "Resolved configuration (also in `manifest.json`):", "", "```json",
              json.dumps(cfg, indent=1, default=str), "```", ""]
    ev = _read(files / "eval.json")
    results = man.get("results")
    if ev or results:
        lines += ["## Evaluation", ""]
    if ev:
        per = ev.get("communities") if isinstance(ev.get("communities"), dict) else {ev.get("community", ""): ev}
        for name, e in per.items():
            if len(per) > 1:
                lines.append(f"Community `{name}`:")
            lines += _eval_lines(e if isinstance(e, dict) else {})
        lines += ["", "All numbers: `eval.json`.", ""]
    if isinstance(results, dict):
        for k, v in results.items():
            lines.append(f"- {k}: `{json.dumps(v, default=str)}`")
        lines.append("")
    return "\n".join(lines)


def write_model_card(out: str | Path) -> Path:
    """Write ``out/README.md`` (replacing an earlier card) and return its path."""
    path = Path(out) / CARD_FILE
    path.write_text(model_card(out))
    return path
