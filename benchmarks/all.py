"""Every speed benchmark in one command, with a summary table of the ratios against their peers.

    python benchmarks/all.py                    # the default model where users run it (~20-30 min on 2 CPU cores)
    python benchmarks/all.py --quick            # tiny-random model, fewer steps (a few minutes; ratios less telling)
    python benchmarks/all.py --only sft,rl-rloo --json out.json

Each benchmark runs in its own subprocess, one after the other (on a small machine two at
once would slow each other), with the same thread settings (``--threads``, and
``OMP_WAIT_POLICY`` as set in the environment, else PASSIVE). Each prints its machine,
threads and versions and one ``RESULT`` line (``bench_env.result``); this script collects
those lines into a table: what is compared, ours, the peer, the ratio, the target and
whether it is met, and the minutes each benchmark took. The AskAcademia data directory that
the reward and feature benchmarks read is built once into ``.bench/aa-data`` (from
``../shared/data/reddit-askacademia``; ``--data DIR`` uses another).

A benchmark that fails is reported as failed with the end of its output; the others still
run, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench_env import RESULT_PREFIX, describe

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED_AA = ROOT.parent / "shared" / "data" / "reddit-askacademia"


def plan(model: str, quick: bool, threads: int, data: str) -> list[tuple[str, list[str]]]:
    """(name, argv after ``python``) of every benchmark, sized for one sitting."""
    t = ["--threads", str(threads)]
    steps = ["--steps", "3", "--warmup", "1"] if quick else ["--steps", "6", "--warmup", "2"]
    return [
        ("sentiment", ["sentiment.py", "--repeat", "1" if quick else "2"]),
        ("ingest", ["ingest.py", "--repeat", "1" if quick else "2", "--skip-growth"]),
        ("sft", ["sft.py", "--model", model, *steps, "--rounds", "1" if quick else "2", *t]),
        ("dpo", ["dpo.py", "--model", model, *steps, "--rounds", "1" if quick else "2", *t]),
        ("reward", ["reward.py", "--data", data, "--model", model, "--steps", "4" if quick else "8",
                    "--repeats", "1" if quick else "2", *t]),
        ("features", ["features.py", "--data", data, "--model", model, "--texts", "32" if quick else "64",
                      "--batch", "16", "--layers", "8" if not quick else "1", "--repeats", "1" if quick else "2", *t]),
        ("judges", ["judges.py", "--data", data, "--model", model, "--texts", "32" if quick else "96",
                    "--top", "1" if quick else "2", "--repeats", "1" if quick else "2", *t]),
        ("recipe", ["recipe.py", "--data", data, "--train-threads", "30" if quick else "120", *t]),
        ("rl-rloo", ["rl.py", "--model", model, "--algo", "rloo", "--prompts", "4", "--length", "16" if quick else "32",
                     "--steps", "3" if quick else "4", "--warmup", "1", *t]),
        ("rl-ppo", ["rl.py", "--model", model, "--algo", "ppo", "--prompts", "4", "--length", "16" if quick else "32",
                    "--steps", "3" if quick else "4", "--warmup", "1", *t]),
    ]


def ensure_data(path: Path) -> Path:
    if (path / "manifest.json").exists():
        return path
    if not SHARED_AA.is_dir():
        raise SystemExit(f"error: {SHARED_AA} not found: pass --data DIR (an `ambient data build` directory)")
    print(f"building {path} from {SHARED_AA} (once) ...", flush=True)
    ambient = Path(sys.executable).with_name("ambient")
    cmd = [str(ambient) if ambient.exists() else "ambient", "data", "build", str(SHARED_AA), "--out", str(path)]
    subprocess.run(cmd, check=True, env={**os.environ, "AMBIENT_PROGRESS": "0"}, stdout=subprocess.DEVNULL)
    return path


def run_one(name: str, argv: list[str], env: dict) -> dict:
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(HERE / argv[0]), *argv[1:]], env=env, capture_output=True, text=True,
                          cwd=ROOT)
    minutes = (time.time() - t0) / 60
    out = proc.stdout + proc.stderr
    results = [json.loads(line[len(RESULT_PREFIX):]) for line in proc.stdout.splitlines()
               if line.startswith(RESULT_PREFIX)]
    if proc.returncode or not results:
        return {"name": name, "failed": True, "minutes": minutes, "command": " ".join(["python", "benchmarks/" + argv[0],
                *argv[1:]]), "tail": out[-2000:]}
    r = results[-1]
    r.update(minutes=minutes, command=" ".join(["python", "benchmarks/" + argv[0], *argv[1:]]))
    return r


def table(rows: list[dict]) -> str:
    lines = ["| benchmark | unit | ours | peer | ratio | target | met | minutes |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("failed"):
            lines.append(f"| {r['name']} | | | | **failed** | | | {r['minutes']:.1f} |")
            continue
        sign = ">=" if r["higher_is_better"] else "<="
        lines.append(f"| {r['name']} | {r['unit']} | {r['ours']:.3g} | {r['peer']:.3g} ({r['peer_name']}) | "
                     f"{r['ratio']:.2f}x | {sign} {r['target']}x | {'yes' if r['met'] else 'no'} | {r['minutes']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model of the model benchmarks (default: `default`; "
                    "`tiny-random` with --quick)")
    ap.add_argument("--quick", action="store_true", help="tiny-random model and fewer steps: minutes, for a smoke run")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    ap.add_argument("--data", default=None, help="an `ambient data build` directory for reward and features "
                    "(default: .bench/aa-data, built once from ../shared)")
    ap.add_argument("--only", default="", help="comma list of benchmark names to run (default: all)")
    ap.add_argument("--json", default=None, help="also write every result here")
    a = ap.parse_args(argv)
    model = a.model or ("tiny-random" if a.quick else "default")
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads),
               OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), AMBIENT_PROGRESS="0",
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    os.environ.update({k: env[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")})
    only = {x.strip() for x in a.only.split(",") if x.strip()}
    steps = plan(model, a.quick, a.threads, a.data or str(ROOT / ".bench" / "aa-data"))
    unknown = only - {n for n, _ in steps}
    if unknown:
        ap.error(f"unknown benchmark(s) {sorted(unknown)}; known: {', '.join(n for n, _ in steps)}")
    steps = [s for s in steps if not only or s[0] in only]
    if a.data is None and any(n in ("reward", "features", "judges") for n, _ in steps):
        ensure_data(ROOT / ".bench" / "aa-data")
    print(describe(a.threads), flush=True)
    print(f"model {model}{' (quick)' if a.quick else ''}; {len(steps)} benchmarks, one at a time", flush=True)
    rows = []
    for name, argv_ in steps:
        print(f"\n== {name}: python benchmarks/{' '.join(argv_)}", flush=True)
        r = run_one(name, argv_, env)
        rows.append(r)
        if r.get("failed"):
            print(f"FAILED after {r['minutes']:.1f} min:\n{r['tail']}", flush=True)
        else:
            print(f"{r['ratio']:.2f}x ({r['ours']:.3g} vs {r['peer']:.3g} {r['unit']}) in {r['minutes']:.1f} min",
                  flush=True)
    print("\n" + describe(a.threads))
    print(table(rows))
    print(f"total {sum(r['minutes'] for r in rows):.1f} min")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 1 if any(r.get("failed") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
