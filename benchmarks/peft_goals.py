"""Full fine-tuning, LoRA and a soft prompt under one RL budget: reward gained per trainable
parameter and the KL each pays; optionally a soft-prompt goal SFT and its steering test.

    python benchmarks/peft_goals.py --run runs/demo --out runs/peft-goals [--sft] [--steps 8]

``--run`` is an ``ambient run`` directory (its ``sft/``, ``rm-proxy/``, ``rm-gold/``,
``data/``).  For each of ``full``, ``lora`` and ``prompt`` it runs ``ambient rl`` from
``sft/`` against ``rm-proxy/`` with the same algorithm, steps, batch, rollouts and seed
(only the trainable parameters and their learning rate differ), then ``ambient eval``
of the result against ``sft/`` on held-out prompts (gold judge ``rm-gold/``, proxy
``rm-proxy/``, same seeds).  The table: trainable parameters, the proxy and gold score
differences (policy - reference, with 95% intervals over threads), their KL(policy ||
reference) in nats per answer, proxy gain per million trainable parameters, and seconds.

``--sft`` also trains a tier-conditioned soft-prompt SFT model (``--condition tier
--peft prompt``, one prompt per tier, the model frozen) and runs its steering test
(goal good vs goal bad).  Every command is printed before it runs; results go to
``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

METHODS = {
    # the learning rate each kind of parameter usually needs (SFTConfig/RLConfig help texts)
    "full": ["learning_rate=3e-5"],
    "lora": ["--peft", "lora", "learning_rate=3e-4"],
    "prompt": ["--peft", "prompt", "prompt_tuning.learning_rate=3e-3"],
}


def _run(cmd: list[str], log: Path) -> float:
    print("$ " + " ".join(cmd), flush=True)
    t = time.time()
    with log.open("w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "AMBIENT_PROGRESS": "0"})
    if r.returncode:
        raise SystemExit(f"failed ({r.returncode}); see {log}")
    return time.time() - t


def _trainable(method: str, rl_dir: Path) -> int:
    """Trainable parameters of the policy, counted from what the method trains."""
    from ambient_rlhf.models.load import load_causal_lm
    from ambient_rlhf.train.common import LoraSettings, apply_lora

    lm = load_causal_lm(str(rl_dir))
    if method == "prompt":
        return sum(p.numel() for n, p in lm.named_parameters() if "prompt_encoder" in n)
    if method == "lora":
        return sum(p.numel() for p in apply_lora(lm, LoraSettings(enabled=True)).parameters() if p.requires_grad)
    return sum(p.numel() for p in lm.parameters())


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="an `ambient run` directory (sft/, rm-proxy/, rm-gold/, data/)")
    ap.add_argument("--out", required=True, help="where the runs and results.json go")
    ap.add_argument("--steps", type=int, default=8, help="RL steps for every method")
    ap.add_argument("--response-length", type=int, default=32)
    ap.add_argument("--n-prompts", type=int, default=12, help="held-out prompts of each evaluation")
    ap.add_argument("--methods", default="full,lora,prompt")
    ap.add_argument("--rl-extra", default="", help="more `ambient rl` overrides for every method, space-separated "
                    "(a tiny random policy never ends an answer: missing_eos_score=null)")
    ap.add_argument("--lrs", default="", help="learning rates instead of the usual ones, e.g. "
                    "full=1e-3,lora=1e-2,prompt=1e-1 (a tiny random model needs far larger steps)")
    ap.add_argument("--sft", action="store_true", help="also a soft-prompt tier SFT and its steering test")
    ap.add_argument("--sft-steps", type=int, default=8)
    ap.add_argument("--model", default="default", help="start model of the soft-prompt SFT (the run's model)")
    a = ap.parse_args(argv)
    run, out = Path(a.run), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    amb = [sys.executable, "-m", "ambient_rlhf.cli"]
    budget = ["--algo", "rloo", f"max_steps={a.steps}", "batch_size=2", "rloo_k=4", f"max_response_tokens={a.response_length}",
              "max_prompt_tokens=128", "save_steps=0", "samples_per_log=0", "seed=0", *a.rl_extra.split()]
    ev = [f"n_prompts={a.n_prompts}", "samples_per_prompt=1", f"max_new_tokens={a.response_length}",
          "max_prompt_tokens=128", "--judge", str(run / "rm-gold"), "--proxy", str(run / "rm-proxy"),
          "--data", str(run / "data"), "--overwrite"]
    lrs = dict(kv.split("=") for kv in a.lrs.split(",") if kv)
    key = {"full": "learning_rate", "lora": "learning_rate", "prompt": "prompt_tuning.learning_rate"}
    methods = {m: [x for x in args if not x.startswith(key[m] + "=")] + ([f"{key[m]}={lrs[m]}"] if m in lrs else
                                                                         [x for x in args if x.startswith(key[m] + "=")])
               for m, args in METHODS.items()}
    results: dict = {"budget": budget, "eval": ev, "methods": {}}
    for m in [x for x in a.methods.split(",") if x]:  # "" : only --sft
        rl_dir, ev_dir = out / f"rl-{m}", out / f"eval-{m}"
        rl_cmd = [*amb, "rl", "--policy", str(run / "sft"), "--reward", str(run / "rm-proxy"), "--data",
                  str(run / "data"), "--out", str(rl_dir), "--overwrite", *budget, *methods[m]]
        t_rl = _run(rl_cmd, out / f"rl-{m}.log")
        ev_cmd = [*amb, "eval", "--policy", str(rl_dir), "--reference", str(run / "sft"), "--out", str(ev_dir), *ev]
        t_ev = _run(ev_cmd, out / f"eval-{m}.log")
        e = json.loads((ev_dir / "eval.json").read_text())
        n = _trainable(m, rl_dir)
        proxy = e["proxy_score"]["difference"]
        results["methods"][m] = {
            "trainable": n, "proxy": proxy, "gold": e["judge_score"]["difference"], "kl": e["kl"],
            "true_utility": (e.get("true_utility") or {}).get("difference"),
            "length_tokens": (e.get("length") or {}).get("difference"),
            "proxy_per_million_params": proxy["value"] / n * 1e6, "rl_seconds": round(t_rl, 1),
            "eval_seconds": round(t_ev, 1), "commands": [" ".join(rl_cmd), " ".join(ev_cmd)]}
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if a.sft:
        sft_dir, steer_dir = out / "sft-tier-prompt", out / "eval-steer-prompt"
        sft_cmd = [*amb, "sft", "--data", str(run / "data"), "--model", a.model, "--out", str(sft_dir), "--overwrite",
                   "--condition", "tier", "--peft", "prompt", f"max_steps={a.sft_steps}", "per_device_train_batch_size=4", "gradient_accumulation_steps=2",
                   "max_prompt_tokens=128", "max_response_tokens=64", "eval_steps=0", "eval_examples=32",
                   "save_steps=0", "sample_prompts=0", "warmup_steps=0"]
        t_sft = _run(sft_cmd, out / "sft.log")
        st_cmd = [*amb, "eval", "--policy", str(sft_dir), "--goal", "good", "--reference", str(sft_dir),
                  "--reference-goal", "bad", "--out", str(steer_dir), *ev]
        t_st = _run(st_cmd, out / "eval-steer.log")
        e = json.loads((steer_dir / "eval.json").read_text())
        results["sft_prompt"] = {"steering": e["steering"], "token_shift": {k: e["token_shift"][k] for k in (
            "kl", "reverse_kl", "gained", "lost")}, "sft_seconds": round(t_sft, 1), "eval_seconds": round(t_st, 1),
            "commands": [" ".join(sft_cmd), " ".join(st_cmd)]}
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    def iv(d, nd=3):
        return "–" if not d else f"{d['value']:+.{nd}f} [{d['low']:+.{nd}f}, {d['high']:+.{nd}f}]"

    print("\n| method | trainable params | proxy gain | gold gain | true utility | KL (nats/answer) | "
          "length change (tokens) | proxy gain per 1M params | RL s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m, r in results["methods"].items():
        print(f"| {m} | {r['trainable']:,} | {iv(r['proxy'])} | {iv(r['gold'])} | {iv(r['true_utility'])} | "
              f"{iv(r['kl'], 2)} | {iv(r.get('length_tokens'), 1)} | {r['proxy_per_million_params']:+.4g} | "
              f"{r['rl_seconds']:.0f} |")
    if "sft_prompt" in results:
        s = results["sft_prompt"]["steering"]
        print(f"\nsoft-prompt tier SFT, steering (good - bad): verdict {s['verdict']}; {s['by']} {iv(s[s['by']])}; "
              f"gold {iv(s.get('judge'))}; length {iv(s['length_tokens'], 1)} tokens")
    return results


if __name__ == "__main__":
    main()
