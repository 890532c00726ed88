"""Seconds per RL iteration: ``ambient rl`` against TRL, in the same run.

    python benchmarks/rl.py                      # tiny-random, CPU, 1 thread, rloo and ppo
    python benchmarks/rl.py --model default --prompts 4 --length 32 --threads 2

* ``--algo rloo`` against TRL 1.16 ``RLOOTrainer`` (the ``.venv``'s trl): same model,
  prompts, k samples per prompt, response length, temperature, KL to a reference, one
  optimizer step per iteration; the reward is the same programmatic token count on both
  sides (so the comparison is of the trainers, not of a reward model).
* ``--algo ppo`` against the last TRL PPO, ``trl==1.12.0`` ``trl.experimental.ppo.PPOTrainer``,
  installed by this script into ``.bench/trl112`` (a venv that shares the ``.venv``'s torch
  and transformers, so only trl differs); same policy, reference, reward model (the same
  body with a scalar head: ours a ``ScalarHeadModel``, theirs the
  ``AutoModelForSequenceClassification`` TRL expects), value model initialised from it,
  4 epochs, 1 minibatch.
* Every side runs in its own subprocess with the same thread settings
  (``OMP_NUM_THREADS``, ``OMP_WAIT_POLICY``; the latter changes small-model step times
  several-fold on CPU).  The figure is the median seconds per iteration after ``--warmup``
  iterations; the ratio is ours / theirs (target <= 0.5).
* ``--peer-repeats 2`` runs the peer twice, alternating with ours (peer, ours, peer[, ours
  with ``reuse_forward=false`` under ``--baseline``]): the ratio is against the mean,
  and the spread of the peer's runs shows how much other jobs on the machine moved the
  figures.  The machine, versions and load averages are printed with the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_env import describe, load_average, result

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / ".bench"
TRL112 = BENCH / "trl112"
TOKEN_SET = (0, 4095)  # reward: number of response tokens with id in this range (both sides)


# ---- setup ---------------------------------------------------------------------------------
def ensure_trl112() -> Path:
    """A venv with trl==1.12.0 on top of this .venv's packages; returns its python."""
    py = TRL112 / "bin" / "python"
    ok = py.exists() and subprocess.run([str(py), "-c", "import trl,sys; sys.exit(trl.__version__ != '1.12.0')"],
                                        capture_output=True).returncode == 0
    if not ok:
        print("creating .bench/trl112 with trl==1.12.0 ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(TRL112)], check=True)
        import site

        base = site.getsitepackages()[0]
        target = subprocess.run([str(py), "-c", "import site; print(site.getsitepackages()[0])"], check=True,
                                capture_output=True, text=True).stdout.strip()
        # share torch/transformers/ambient_rlhf: addsitedir also runs the base's .pth files
        # (the editable install of this package is one)
        Path(target, "ambient_base.pth").write_text(f"import site; site.addsitedir({base!r})\n")
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "trl==1.12.0"], check=True)
    return py


def prepare(work: Path, model: str, n_prompts: int) -> dict:
    """Data dir (train prompts), reward model dirs for both sides."""
    import pandas as pd
    import torch
    from transformers import AutoModelForSequenceClassification

    from ambient_rlhf.models.heads import ScalarHeadModel
    from ambient_rlhf.models.load import load_causal_lm, load_tokenizer, resolve_model

    path = resolve_model(model)
    words = "apple river stone cloud paper lamp garden window music table forest letter".split()
    prompts = [f"Question {i}: why is the {words[i % 12]} next to the {words[(3 * i + 5) % 12]}?"
               for i in range(max(n_prompts * 8, 32))]
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"thread_id": [f"t{i:04d}" for i in range(len(prompts))], "prompt": prompts,
                  "split": "train"}).to_parquet(data / "responses.parquet")
    tok = load_tokenizer(path)
    torch.manual_seed(0)
    rm = ScalarHeadModel(load_causal_lm(path))
    rm.save_pretrained(work / "rm_ours", tok)
    seq = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    with torch.no_grad():  # the same scalar head on the same body
        seq.score.weight.copy_(rm.head.weight)
    seq.config.pad_token_id = tok.pad_token_id
    seq.save_pretrained(work / "rm_trl")
    tok.save_pretrained(work / "rm_trl")
    return {"model": path, "data": str(data), "rm_ours": str(work / "rm_ours"), "rm_trl": str(work / "rm_trl")}


# ---- workers (one per subprocess) ----------------------------------------------------------
def worker_ours(a, paths) -> dict:
    from ambient_rlhf.config import load_config
    from ambient_rlhf.logging import read_jsonl
    from ambient_rlhf.train.rl import RLConfig, train_rl

    reward = paths["rm_ours"] if a.algo == "ppo" else f"token-count:{TOKEN_SET[0]}-{TOKEN_SET[1]}"
    out = Path(a.work) / f"ours_{a.algo}"
    cfg = load_config(RLConfig, None, [
        f"policy={paths['model']}", f"reward={reward}", f"data={paths['data']}", f"out={out}", f"algo={a.algo}",
        f"max_steps={a.steps}", f"batch_size={a.prompts}", f"rloo_k={a.k}", f"max_response_tokens={a.length}",
        "missing_eos_score=null", "save_steps=0", "overwrite=true", "kl.kind=fixed", "kl.init_beta=0.05",
        "learning_rate=1e-6", "num_minibatches=1", "ppo_epochs=4", "sample_every=1000000", *json.loads(a.extra or "[]")])
    train_rl(cfg)
    rows = read_jsonl(out / "metrics.jsonl")
    phases = ("time/generate", "time/score", "time/reference", "time/policy_forward", "time/train")
    after = rows[a.warmup:]
    return {"per_step": [r["time/step"] for r in rows],
            "phases": {p: statistics.median(r[p] for r in after) for p in phases}}


def _timing_callback(times):
    from transformers import TrainerCallback

    class Times(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter())

    return Times()


def worker_trl_rloo(a, paths) -> dict:
    import torch
    from datasets import Dataset
    from trl import RLOOConfig, RLOOTrainer

    from ambient_rlhf.models.load import load_tokenizer
    from ambient_rlhf.models.tokenize import render_prompt
    from ambient_rlhf.train.rl import load_prompts

    tok = load_tokenizer(paths["model"], padding_side="left")
    prompts = [render_prompt(tok, p) for p in load_prompts(paths["data"])]
    lo, hi = TOKEN_SET

    def count_tokens(completions, completion_ids, **kw):
        return [float(sum(lo <= t <= hi for t in ids)) for ids in completion_ids]

    cfg = RLOOConfig(
        output_dir=str(Path(a.work) / "trl_rloo"), per_device_train_batch_size=a.prompts * a.k, num_generations=a.k,
        gradient_accumulation_steps=1, max_completion_length=a.length, temperature=0.7, top_p=1.0, top_k=0,
        beta=0.05, learning_rate=1e-6, max_steps=a.steps, logging_steps=1, report_to=[], save_strategy="no",
        use_cpu=not torch.cuda.is_available(), bf16=torch.cuda.is_available(), seed=1, disable_tqdm=True,
        dataloader_num_workers=0)
    times: list[float] = []
    trainer = RLOOTrainer(model=paths["model"], reward_funcs=count_tokens, args=cfg,
                          train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tok,
                          callbacks=[_timing_callback(times)])
    t0 = time.perf_counter()
    trainer.train()
    return {"per_step": [b - a_ for a_, b in zip([t0] + times[:-1], times)]}


def worker_trl_ppo(a, paths) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from ambient_rlhf.models.load import load_tokenizer
    from ambient_rlhf.models.tokenize import encode_prompt
    from ambient_rlhf.train.rl import load_prompts

    tok = load_tokenizer(paths["model"], padding_side="left")
    ids = [encode_prompt(tok, p, 256)[0] for p in load_prompts(paths["data"])]
    ds = Dataset.from_dict({"input_ids": ids})
    cfg = PPOConfig(
        output_dir=str(Path(a.work) / "trl_ppo"), per_device_train_batch_size=a.prompts, gradient_accumulation_steps=1,
        num_mini_batches=1, num_ppo_epochs=4, local_rollout_forward_batch_size=a.prompts,
        total_episodes=a.prompts * a.steps, response_length=a.length, temperature=0.7, stop_token="eos",
        missing_eos_penalty=None, kl_coef=0.05, learning_rate=1e-6, num_sample_generations=0, report_to=[],
        save_strategy="no", use_cpu=not torch.cuda.is_available(), bf16=torch.cuda.is_available(), seed=1,
        logging_steps=1, disable_tqdm=True, dataloader_num_workers=0)
    policy = AutoModelForCausalLM.from_pretrained(paths["model"])
    ref = AutoModelForCausalLM.from_pretrained(paths["model"])
    rm = AutoModelForSequenceClassification.from_pretrained(paths["rm_trl"], num_labels=1)
    vm = AutoModelForSequenceClassification.from_pretrained(paths["rm_trl"], num_labels=1)
    times: list[float] = []
    trainer = PPOTrainer(args=cfg, processing_class=tok, model=policy, ref_model=ref, reward_model=rm,
                         value_model=vm, train_dataset=ds, eval_dataset=ds, callbacks=[_timing_callback(times)])
    t0 = time.perf_counter()
    trainer.train()
    return {"per_step": [b - a_ for a_, b in zip([t0] + times[:-1], times)]}


WORKERS = {"ours": worker_ours, "trl-rloo": worker_trl_rloo, "trl-ppo": worker_trl_ppo}


# ---- driver --------------------------------------------------------------------------------
def run_side(python: str, side: str, a, paths: dict, env: dict, extra: list[str] = ()) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--worker", side, "--algo", a.algo, "--work", a.work,
           "--paths", json.dumps(paths), "--steps", str(a.steps), "--warmup", str(a.warmup), "--prompts",
           str(a.prompts), "--k", str(a.k), "--length", str(a.length), "--extra", json.dumps(list(extra))]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{side} ({a.algo}) failed:\n{r.stderr[-4000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["median"] = statistics.median(res["per_step"][a.warmup:])
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--algo", default="rloo,ppo", help="comma list of rloo, ppo")
    p.add_argument("--steps", type=int, default=6, help="iterations per side")
    p.add_argument("--warmup", type=int, default=2, help="iterations left out of the median")
    p.add_argument("--prompts", type=int, default=4, help="prompts per iteration")
    p.add_argument("--k", type=int, default=4, help="RLOO samples per prompt")
    p.add_argument("--length", type=int, default=16, help="response tokens")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--wait-policy", default="ACTIVE", help="OMP_WAIT_POLICY for both sides")
    p.add_argument("--trl112-path", help="a directory holding trl==1.12.0 (pip install --target), used instead "
                   "of creating .bench/trl112 (for machines without network)")
    p.add_argument("--baseline", nargs="*", metavar="KEY=VALUE", help="also run ours with these rl overrides in "
                   "the same run (bare --baseline: reuse_forward=false, the separate no-grad forward for the old "
                   "log-probs; e.g. --baseline share_prompts=false for the prompts computed once per sample)")
    p.add_argument("--peer-repeats", type=int, default=1, help="run the peer this many times, alternating with "
                   "ours (2 brackets our runs: on a shared machine the spread shows the contention)")
    p.add_argument("--extra", help=argparse.SUPPRESS)
    p.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--paths", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from ambient_rlhf.logging import setup_logging

        setup_logging(0)
        res = WORKERS[a.worker](a, json.loads(a.paths))
        print(json.dumps(res))
        return 0

    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads),
               OMP_WAIT_POLICY=a.wait_policy, AMBIENT_PROGRESS="0", TOKENIZERS_PARALLELISM="false",
               TRL_EXPERIMENTAL_SILENCE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    algos = [x.strip() for x in a.algo.split(",") if x.strip()]
    trl112, ppo_env = None, env
    if "ppo" in algos and a.trl112_path:
        trl112 = sys.executable
        ppo_env = dict(env, PYTHONPATH=os.pathsep.join([a.trl112_path, env.get("PYTHONPATH", "")]))
    elif "ppo" in algos:
        trl112 = str(ensure_trl112())
    import torch

    with tempfile.TemporaryDirectory(prefix="rlbench-") as work:
        a.work = work
        paths = prepare(Path(work), a.model, a.prompts)
        print(describe(a.threads) + " (PPO's peer: trl 1.12.0)")
        print(f"model={a.model} device={'cuda' if torch.cuda.is_available() else 'cpu'} threads={a.threads} "
              f"OMP_WAIT_POLICY={a.wait_policy} prompts={a.prompts} k={a.k} length={a.length} "
              f"steps={a.steps} (median after {a.warmup})")
        for algo in algos:
            a.algo = algo
            if algo == "rloo":
                peer_name = "TRL 1.16 RLOOTrainer"
                run_peer = lambda: run_side(sys.executable, "trl-rloo", a, paths, env)  # noqa: E731
            else:
                peer_name = "TRL 1.12 PPOTrainer"
                run_peer = lambda: run_side(trl112, "trl-ppo", a, paths, ppo_env)  # noqa: E731
            base = (a.baseline or ["reuse_forward=false"]) if a.baseline is not None else []
            ours_runs = [("ours", [])] + ([("ours, " + " ".join(base), base)] if base else [])
            peers, results = [], {}
            for i in range(max(a.peer_repeats, len(ours_runs))):  # peer, ours, peer, ours baseline, ...
                if i < a.peer_repeats:
                    peers.append(run_peer()["median"])
                if i < len(ours_runs):
                    name, extra = ours_runs[i]
                    results[name] = run_side(sys.executable, "ours", a, paths, env, extra)
            peer = statistics.mean(peers)
            spread = f" (runs: {', '.join(f'{x:.3f}' for x in peers)})" if len(peers) > 1 else ""
            print(f"{algo}: {peer_name} {peer:.3f} s/iter{spread}")
            for name, res in results.items():
                print(f"  {name}: {res['median']:.3f} s/iter, ratio {res['median'] / peer:.2f}x; per phase (median s): "
                      + ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in res["phases"].items()))
            result(f"rl-{algo}", ours=results["ours"]["median"], peer=peer, unit="s/iteration", higher_is_better=False,
                   target=0.5, peer_name=peer_name, threads=a.threads, model=a.model, peer_runs=peers,
                   phases=results["ours"]["phases"])
        print(f"load average at the end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
