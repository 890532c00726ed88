"""``ambient eval``: argument parsing; the evaluation is
:func:`ambient_rlhf.eval.policy_eval.evaluate_policy`."""

from __future__ import annotations

import argparse

from ambient_rlhf.cli import common_parser, parse_stage
from ambient_rlhf.data.schema import TIERS
from ambient_rlhf.eval.policy_eval import EvalConfig, evaluate_policy


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ambient eval", parents=[common_parser()],
                                description="Compare a policy with its reference on held-out prompts, judged by a gold reward model.")
    p.add_argument("--policy", help="model under test (RL output, or tier-conditioned SFT with --goal)")
    p.add_argument("--reference", help="reference model, usually the SFT model")
    p.add_argument("--judge", help="gold reward model (not the one RL optimised)")
    p.add_argument("--data", help="data directory")
    p.add_argument("--proxy", help="optional: the reward model RL optimised, scored alongside")
    p.add_argument("--out", help="output directory (default: eval)")
    p.add_argument("--goal", choices=list(TIERS), help="goal token for a tier-conditioned policy")
    p.add_argument("--reference-goal", dest="reference_goal", choices=list(TIERS),
                   help="goal token for the reference; with --reference = --policy and --goal good "
                        "--reference-goal bad this is the steering test (only the goal differs)")
    p.add_argument("--split", help="split of the prompts (default: test)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args, cfg = parse_stage(p, argv, EvalConfig,
                            values=("policy", "reference", "judge", "data", "proxy", "out", "goal", "reference_goal", "split"),
                            switches=("overwrite",))
    if cfg is None:
        return 0
    r = evaluate_policy(cfg)
    wr = r["win_rate"]
    print(f"win rate of policy over reference: {wr['value']:.3f} [{wr['low']:.3f}, {wr['high']:.3f}] "
          f"({r['n_prompts']} prompts x {r['samples_per_prompt']}; {r['verdict']}); "
          f"KL {r['kl']['value']:.2f} nats; -> {cfg.out}/eval.json")
    for name, m in ((r.get("true_utility") or {}).get("policy_samples") or {}).items():
        sp = m["spearman"]
        print(f"{name} on the policy's own samples: Spearman with the true utility {sp['value']:.2f} "
              f"[{sp['low']:.2f}, {sp['high']:.2f}], pair accuracy {m['pair_accuracy']['value']:.2f} "
              f"({m['pair_accuracy']['n']} pairs)")
    st = r.get("steering")
    if st:
        d = st[st["by"]]
        print(f"steering: goal {st['goal']} minus goal {st['reference_goal']} on the {st['by'].replace('_', ' ')}: "
              f"{d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] ({st['verdict']}); length "
              f"{st['length_tokens']['value']:+.1f} tokens [{st['length_tokens']['low']:+.1f}, "
              f"{st['length_tokens']['high']:+.1f}]")
    return 0
