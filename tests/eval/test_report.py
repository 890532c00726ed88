"""``ambient report`` on run directories of two kinds: one written by the stages themselves
(tiny-random models, a template-simulated community: the report must read the files as
the producers lay them out) and synthetic ones written here, whose invented numbers
control the headline's wording and whose torn files test robustness; the rendered page
is checked in headless Chromium."""

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ambient_rlhf.eval.policy_eval import EvalConfig, summarize
from ambient_rlhf.eval.report import REPORT_DIR, REPORT_FILE, discover, write_report

EVIL = "<script>alert('x')</script> & <b>bold</b>"


def _png(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    fig.savefig(path)
    plt.close(fig)


def _jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _manifest(d: Path, stage: str, **extra) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_text(json.dumps({"stage": stage, "created": "2026-01-01T00:00:00Z", **extra}))


def _rm_eval(acc: float, longer: float) -> dict:
    """An eval.json in the layout of ambient_rlhf.eval.reward_eval.evaluate_reward."""
    ci = lambda v, w=0.04: {"value": v, "ci_low": v - w, "ci_high": v + w, "n": 400}  # noqa: E731
    return {
        "community": "askacademia", "split": "test", "n_pairs": 400, "n_threads": 90,
        "accuracy": ci(acc), "baselines": {"longer_wins": ci(longer), "loglik_sum": ci(0.52), "loglik_model": "sft"},
        "preferred_shorter": {"n": 120, "accuracy": ci(acc - 0.05, 0.08), "longer_wins": 0.0},
        "untimed_pairs": {"source": "built", "n": 300, "earlier_wins": ci(0.86), "longer_wins": ci(0.6),
                          "accuracy": ci(acc)},
        "calibration": {"scale": "raw", "ece": 0.04, "bins": [
            {"lo": 0.5, "hi": 0.6, "n": 100, "confidence": 0.55, "accuracy": 0.57},
            {"lo": 0.6, "hi": 0.7, "n": 150, "confidence": 0.65, "accuracy": 0.62},
            {"lo": 0.7, "hi": 0.8, "n": 0, "confidence": 0.75, "accuracy": 0.0},
            {"lo": 0.8, "hi": 0.9, "n": 90, "confidence": 0.84, "accuracy": 0.80}]},
        "length_correlation": {"pearson": 0.21, "spearman": 0.25, "n": 800},
        "plots": ["reliability.png", "accuracy_buckets.png"],
    }


def _eval_rows(rng, n_prompts: int, shift: float) -> list[dict]:
    rows = []
    for t in range(n_prompts):
        for s in range(2):
            ref = float(rng.normal())
            pol = ref + shift + float(rng.normal(scale=0.8))
            tu_r = float(rng.normal())
            rows.append(dict(
                thread_id=f"t{t:03d}", sample=s, prompt=f"Question {t}: how do I write a thesis?" if t else EVIL,
                reference=f"reference answer {t} {s}", policy=(EVIL if t == 0 else f"policy answer {t} {s} more words"),
                reference_score=ref, policy_score=pol, kl=float(abs(rng.normal(3.0))), policy_tokens=20,
                reference_tokens=18, policy_stopped=True, reference_stopped=bool(s),
                reference_proxy=ref, policy_proxy=pol + 1.0,
                reference_true_utility=tu_r, policy_true_utility=tu_r + shift / 2 + float(rng.normal(scale=0.3))))
    return rows


def _eval_dir(d: Path, rows: list[dict], **cfg) -> None:
    _manifest(d, "eval", seconds={"total_s": 42.0})
    c = EvalConfig(policy=cfg.get("policy", "run/rl"), reference=cfg.get("reference", "run/sft"), judge="run/rm-gold",
                   data="run/data", proxy="run/rm-proxy", goal=cfg.get("goal"), reference_goal=cfg.get("reference_goal"),
                   bootstrap_resamples=300)
    (d / "eval.json").write_text(json.dumps({**summarize(rows, c), **cfg.get("extra", {})}))
    _jsonl(d / "samples.jsonl", rows)


def make_run_dir(root: Path) -> Path:
    """A run directory shaped like ``ambient run`` output, every number invented."""
    rng = np.random.default_rng(0)
    run = root / "run"
    _manifest(run / "simulate", "simulate", counts={"threads": 1000, "responses": 4000},
              utility_weights={"relevance": 1.0, "sentiment": 0.5, "length": 0.5, "repetition": -1.0},
              summary={"utility_mean": 0.6, "spearman_score_utility": 0.41, "spearman_score_delay": -0.35})
    _manifest(run / "data", "data", counts={"threads": {"read": 1200, "kept": 1000},
                                           "responses": {"read": 9000, "kept": 7000, "deleted": 800, "bot": 40},
                                           "pairs": 3100}, bad_records={"total": 3, "by_reason": {"bad json": 3}},
              files=["responses.parquet", "score_distribution.png"])
    _png(run / "data" / "score_distribution.png")
    _manifest(run / "sft", "sft", seconds=120.5)
    _jsonl(run / "sft" / "metrics.jsonl", [{"step": i, "train/loss": 3.0 - 0.05 * i} for i in range(20)])
    for name, acc in (("rm-proxy", 0.71), ("rm-gold", 0.69)):
        _manifest(run / name, "rm", timings={"total_seconds": 300.0})
        (run / name / "eval.json").write_text(json.dumps(_rm_eval(acc, 0.62)))
        _jsonl(run / name / "metrics.jsonl", [{"step": i, "rm/loss": 0.69 - 0.01 * i} for i in range(20)])
    _png(run / "rm-gold" / "eval" / "askacademia-test" / "accuracy_buckets.png")
    _manifest(run / "rl", "rl", seconds=600.0)
    _jsonl(run / "rl" / "metrics.jsonl", [
        {"step": i, "objective/score": 0.1 * i, "objective/kl": 0.3 * i, "objective/entropy": 2.0 - 0.02 * i,
         "gen/length": 40 + i, "kl/beta": 0.05, "gen/eos_rate": 0.9} for i in range(1, 31)])
    _eval_dir(run / "eval", _eval_rows(rng, 12, shift=0.8))
    _eval_dir(run / "eval-goal", _eval_rows(rng, 12, shift=0.0), policy="run/sft-tier", goal="good")
    # the steering test: one model, goal good vs goal bad; the token shift as goal_shift writes it
    shift = {"goal": "good", "reference_goal": "bad", "temperature": 0.7, "positions": 400, "tv_of_mean": 0.12,
             "kl": {"on": "good", "sequence": {"value": 2.5, "low": 2.0, "high": 3.1, "n": 12}, "per_token": 0.06,
                    "first_token": 0.4, "tokens": 200},
             "reverse_kl": {"on": "bad", "sequence": {"value": 2.1, "low": 1.7, "high": 2.6, "n": 12},
                            "per_token": 0.05, "first_token": 0.3, "tokens": 200},
             "by_position": {"kl": [0.4, 0.1, None, 0.05], "reverse_kl": [0.3, 0.08, 0.02, 0.04],
                             "n": [12, 12, 0, 6], "n_reverse": [12, 12, 8, 6]},
             "gained": [{"id": 1, "token": " thanks", "p_goal": 0.02, "p_reference_goal": 0.005, "difference": 0.015},
                        {"id": 2, "token": EVIL, "p_goal": 0.01, "p_reference_goal": 0.004, "difference": 0.006}],
             "lost": [{"id": 3, "token": " no", "p_goal": 0.001, "p_reference_goal": 0.02, "difference": -0.019}]}
    _eval_dir(run / "eval-steer", _eval_rows(rng, 12, shift=0.8), policy="run/sft-tier", reference="run/sft-tier",
              goal="good", reference_goal="bad", extra={"token_shift": shift})
    (run / "notes").mkdir()  # an unrelated folder is ignored
    (run / "manifest.json").write_text(json.dumps({"stage": "run", "status": "finished", "seconds": 1500.0, "stages": [
        {"name": "rl", "status": "ran", "seconds": 610.0}, {"name": "rl-long", "status": "failed"}]}))
    return run


def _imgs(page: str) -> list[str]:
    return re.findall(r"<img [^>]*src=\"([^\"]+)\"", page)


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    """(run dir, report path) of the synthetic full run; shared by the tests that only read it."""
    run = make_run_dir(tmp_path_factory.mktemp("full"))
    return run, write_report(run)


def test_report_of_a_full_run(full_report):
    run, path = full_report
    assert path == run / REPORT_DIR / REPORT_FILE
    page = path.read_text()
    pngs = sorted((run / REPORT_DIR).glob("*.png"))
    srcs = _imgs(page)
    # every figure is embedded, and every embedded figure is also a PNG file
    assert len(srcs) == len(pngs) >= 10
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in srcs}
    assert embedded == {p.read_bytes() for p in pngs}
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert all(b.startswith(b"\x89PNG") for b in embedded)
    # self-contained: no external reference of any kind, no scripts
    assert not re.search(r"(src|href)=(?![\"']?(data:|#))", page)
    assert "<script" not in page and "<link" not in page and "@import" not in page
    # model output is escaped, not interpreted
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page
    assert "could not be drawn" not in page
    # honest headline: eval has a clear win (shift 0.8), eval-goal no real difference
    head = page[page.index("id='headline'"):page.index("id='win'")]
    assert "[eval] On the gold judge <code>rm-gold</code>, the policy <code>rl</code> <b>beat</b>" in head
    assert "[eval-goal]" in head and "<b>did not clearly beat</b>" in head and "goal <code>good</code>" in head
    # the steering test is stated as one (a goal, not a policy, is tested), on the true utility
    assert ("[eval-steer] Steering test on 12 held-out prompts: the goal token of <code>sft-tier</code> "
            "<b>steers</b> — goal <code>good</code> minus goal <code>bad</code>, same seeds: true utility ") in head
    assert "moved by 0.0600 nats per token (exact KL; 0.4000 at the first)" in head
    steer = page[page.index("id='steering'"):page.index("id='frontier'")]
    assert "<td>&#x27; thanks&#x27;</td><td>0.0200</td><td>0.0050</td><td>+1.50e-02</td><td>&#x27; no&#x27;</td>" in steer
    assert "&lt;script&gt;" in steer and "<script>" not in steer
    # reward models: 0.69 +- 0.04 vs longer 0.62 +- 0.04 -> 0.65 > 0.66? no: overlapping -> "some"
    # (it beats loglik 0.52 +- 0.04 clearly: 0.65 > 0.56)
    assert "[rm-gold on askacademia] reward-model pairwise accuracy 0.690 [0.650, 0.730]" in head
    assert "intervals apart: loglik sum" in head
    assert "<td>rl</td><td>ran</td><td>2026-01-01T00:00:00Z</td><td>610</td>" in page  # the run's timing wins
    assert "<td>rl-long</td><td>failed</td>" in page and "Run status: finished, 1500 s in all." in page
    assert "raw score vs posting delay (within-thread Spearman; the exposure confound)" in page
    assert "Hidden utility = 1·relevance + 0.5·sentiment + 0.5·length − 1·repetition." in page
    for section in ("data_counts_data", "data_counts_simulate", "data_data_score_distribution", "rm_accuracy_rm_gold_on_askacademia", "rm_calibration_rm_proxy_on_askacademia",
                    "rm_rm_gold_on_askacademia_accuracy_buckets", "rl_curves_rl", "frontier", "win_rates",
                    "true_utility_eval", "true_vs_reward_eval", "training_losses", "goal_kl_by_position_eval_steer"):
        assert (run / REPORT_DIR / f"{section}.png").is_file(), section
    assert json.loads((run / REPORT_DIR / "manifest.json").read_text())["counts"]["eval"] == 3


def test_report_of_an_empty_run_says_not_run(tmp_path):
    page = write_report(tmp_path).read_text()
    assert page.count("not run") >= 6 and "No policy evaluation in this run yet" in page
    assert "could not be drawn" not in page and not _imgs(page)


def test_report_of_a_single_stage_dir(tmp_path):
    run = make_run_dir(tmp_path)
    found = discover(run / "rl")
    assert [s.name for s in found["rl"]] == ["rl"] and not found["eval"]
    page = write_report(run / "rl").read_text()
    assert len(_imgs(page)) == 2  # RL curves and the reward-vs-KL plot
    assert "could not be drawn" not in page


def test_report_tolerates_broken_and_partial_inputs(tmp_path):
    run = make_run_dir(tmp_path)
    (run / "eval" / "eval.json").write_text("{not json")  # torn write
    (run / "eval-goal" / "eval.json").write_text(json.dumps({"win_rate": 0.5}))  # old/partial layout
    with (run / "rl" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 31, "objective/sc')  # torn last line
    (run / "rm-proxy" / "eval.json").write_text(json.dumps({"communities": {"a": _rm_eval(0.7, 0.6), "b": {}}}))
    shutil.rmtree(run / "data")
    shutil.rmtree(run / "simulate")
    page = write_report(run).read_text()
    assert "data: not run" in page
    assert "could not be drawn" not in page
    assert "[rm-proxy on a]" in page


def test_cli(tmp_path, capsys):
    from ambient_rlhf.cli import main

    run = tmp_path / "run"
    _manifest(run / "sft", "sft")
    for out in (tmp_path / "r", tmp_path / "r"):  # the second call replaces the first report
        assert main(["report", str(run), "--out", str(out)]) == 0
        assert f"report: {out / REPORT_FILE}" in capsys.readouterr().out
    assert (tmp_path / "r" / REPORT_FILE).is_file()
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err


# ---- rendering in a real browser -------------------------------------------------------------
CHECK = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var d = document.createElement('div'); d.id = 'render-check';
  d.textContent = 'images ' + ok + '/' + imgs.length + ' width ' + document.body.scrollWidth;
  document.body.appendChild(d);
});
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("headless Chromium not installed (Debian: apt-get install chromium; scripts/setup.sh does it)")


def run_chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, env={**os.environ, "HOME": str(tmp)})


def test_report_renders_in_headless_chromium(full_report, tmp_path):
    chromium()
    _, path = full_report
    page = path.read_text()
    n = len(_imgs(page))
    probe = tmp_path / "probe.html"  # the report plus a script that counts decoded images
    probe.write_text(page.replace("</body>", CHECK + "</body>"))
    r = run_chromium(["--virtual-time-budget=5000", "--dump-dom", probe.as_uri()], tmp_path)
    m = re.search(r'<div id="render-check">images (\d+)/(\d+) width (\d+)</div>', r.stdout)
    assert m, f"no render marker; chromium said: {r.stderr[-2000:]}"
    assert int(m.group(1)) == int(m.group(2)) == n  # every figure decoded with a non-zero width
    assert "ambient-rlhf report" in r.stdout
    # a screenshot of the report itself is not blank
    shot = tmp_path / "shot.png"
    r = run_chromium(["--window-size=1200,1600", "--hide-scrollbars", f"--screenshot={shot}", path.as_uri()], tmp_path)
    assert shot.is_file(), r.stderr[-2000:]
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)  # (H, W, C) floats in [0, 1]
    assert img.shape[0] == 1600 and img.shape[1] == 1200
    assert img[..., :3].std() > 0.05  # text and figures, not one flat colour


def _truth_report(tmp_path: Path, truth_eval: dict) -> str:
    """The report of a run that has only a truth stage with this eval.json."""
    run = tmp_path / "run"
    _manifest(run / "truth", "truth")
    (run / "truth" / "eval.json").write_text(json.dumps(truth_eval))
    return Path(write_report(run)).read_text()


def test_report_shows_true_utility_recovery_from_the_truth_stage(tmp_path):
    page = _truth_report(tmp_path, {
        "split": "test",
        "labels": {"test": {"score": {"spearman": 0.755, "pair_accuracy": 0.817},
                            "adjusted": {"spearman": 0.742, "pair_accuracy": 0.811},
                            "n": {"threads": 12, "responses": 60}}},
        "reward_models": {"rm-proxy": {"spearman": 0.183, "pair_accuracy": 0.567}},
        "baselines": {"length": {"spearman": 0.301, "pair_accuracy": 0.612}},
        "comparisons": {"rm-proxy": {"vs_length": {"difference": -0.118, "ci_low": -0.25, "ci_high": 0.02, "threads": 12},
                                     "vs_score": {"difference": -0.572, "ci_low": -0.7, "ci_high": -0.4, "threads": 12}}},
    })
    rows = re.findall(r"<tr>(.*?)</tr>", page, flags=re.S)
    cells = [re.sub(r"<[^>]+>", "|", r) for r in rows]
    assert any("raw score" in c and "0.755" in c and "0.817" in c for c in cells)
    assert any("adjusted rank" in c and "0.742" in c for c in cells)
    assert any("rm-proxy" in c and "0.183" in c and "0.567" in c and "-0.118 [-0.250, +0.020]" in c
               and "-0.572 [-0.700, -0.400]" in c for c in cells)
    assert any("longer answer" in c and "0.301" in c and "0.612" in c for c in cells)
    assert "12 threads, 60 answers" in page
    # the headline states the comparison with the length baseline; the interval
    # [-0.25, +0.02] straddles 0, so no claim either way
    head = page[page.index("id='headline'"):]
    assert "rm-proxy (within-thread Spearman 0.18) <b>does not clearly beat</b> the longer-answer baseline (0.30)" in head
    assert "-0.12 [-0.25, +0.02] over 12 held-out threads" in head


def test_headline_says_when_a_reward_model_beats_length_on_the_hidden_utility(tmp_path):
    page = _truth_report(tmp_path, {
        "split": "test",
        "labels": {"test": {"score": {"spearman": 0.65, "pair_accuracy": 0.78}, "n": {"threads": 51, "responses": 204}}},
        "reward_models": {"rm-proxy": {"spearman": 0.545, "pair_accuracy": 0.745}},
        "baselines": {"length": {"spearman": 0.367, "pair_accuracy": 0.647}},
        "comparisons": {"rm-proxy": {"vs_length": {"difference": 0.178, "ci_low": 0.045, "ci_high": 0.309, "threads": 51}}},
    })
    head = page[page.index("id='headline'"):]
    assert "rm-proxy (within-thread Spearman 0.55) <b>recovers it better</b> than the longer-answer baseline (0.37)" in head
    assert "+0.18 [+0.04, +0.31] over 51 held-out threads" in head
    assert "raw upvote score" not in head  # no comparison with the score was given


# ---- the report of a run whose every input comes from the real producer ------------------------
@pytest.fixture(scope="module")
def produced_run(tmp_path_factory, tiny_model_path):
    """A run directory written by the stages themselves (template-simulated community,
    tiny-random models, a few steps each), so the report reads the files exactly as the
    producers lay them out; the hand-written run above controls the numbers instead."""
    from ambient_rlhf.config import load_config
    from ambient_rlhf.data import simulate as sim
    from ambient_rlhf.data.build import DataConfig, build
    from ambient_rlhf.eval.policy_eval import evaluate_policy
    from ambient_rlhf.simulate import evaluate_recovery
    from ambient_rlhf.train.reward import RewardConfig, train_reward
    from ambient_rlhf.train.rl import RLConfig, train_rl
    from ambient_rlhf.train.sft import SFTConfig, train_sft

    run = tmp_path_factory.mktemp("produced") / "run"
    sim.simulate(run / "simulate", sim.SimulateConfig(threads=30, responses=4, seed=1, model="template"))
    build([str(p) for p in sorted((run / "simulate").glob("*.ndjson"))], str(run / "data"),
          load_config(DataConfig, None, ["splits={train: 0.5, valid: 0.2, test: 0.3}",
                                         "labels.min_prompt_score=2", "labels.min_score_ratio=1.5"]))
    data = str(run / "data")
    train_sft(SFTConfig(data=data, model=tiny_model_path, out=str(run / "sft"), max_steps=2, per_device_train_batch_size=2,
                        gradient_accumulation_steps=1, eval_steps=0, eval_examples=8, save_steps=0, sample_prompts=0,
                        logging_steps=1))
    train_reward(load_config(RewardConfig, None, [f"data={data}", f"model={tiny_model_path}", f"out={run / 'rm-gold'}",
                                                  "num_train_epochs=1", "train_layers=1", "eval_steps=0", "eval_split=test"]))
    train_rl(load_config(RLConfig, None, [f"policy={run / 'sft'}", f"reward={run / 'rm-gold'}", f"data={data}",
                                          f"out={run / 'rl'}", "algo=rloo", "max_steps=2", "batch_size=2", "rloo_k=2",
                                          "max_response_tokens=8", "save_steps=0", "sample_every=1"]))
    evaluate_policy(load_config(EvalConfig, None, [
        f"policy={run / 'rl'}", f"reference={run / 'sft'}", f"judge={run / 'rm-gold'}", f"data={data}",
        f"out={run / 'eval'}", "n_prompts=4", "max_new_tokens=8", "bootstrap_resamples=100"]))
    evaluate_recovery(data, {"rm-gold": str(run / "rm-gold")}, run / "truth")
    return run, write_report(run)


def _rows(page: str) -> list[list[str]]:
    """The cells of every table row of the page, as text."""
    return [[re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", r, flags=re.S)]
            for r in re.findall(r"<tr>(.*?)</tr>", page, flags=re.S)]


def test_report_reads_what_the_stages_write(produced_run):
    run, path = produced_run
    page = path.read_text()
    assert "could not be drawn" not in page
    # every stage directory is found, with the time its manifest records
    stages = {r[1]: r for r in _rows(page[page.index("id='stages'"):]) if len(r) == 5}
    assert set(stages) == {"simulate", "data", "sft", "rm-gold", "rl", "eval", "truth"}, stages
    for name in stages:
        assert stages[name][3] == json.loads((run / name / "manifest.json").read_text())["created"]
    # the headline quotes the evaluation's own numbers (formatted here by hand)
    ev = json.loads((run / "eval" / "eval.json").read_text())
    w = ev["win_rate"]
    assert (f"win rate {w['value']:.3f} [{w['low']:.3f}, {w['high']:.3f}] (95% bootstrap interval over "
            f"{ev['n_prompts']} held-out prompts") in page
    assert f"at a KL of {ev['kl']['value']:.2f} nats per answer" in page
    # ... and the reward model's, labelled with the community the data stage recorded
    rm = json.loads((run / "rm-gold" / "eval.json").read_text())
    acc = rm["accuracy"]
    assert (f"[rm-gold on AmbientSim] reward-model pairwise accuracy {acc['value']:.3f} "
            f"[{acc['ci_low']:.3f}, {acc['ci_high']:.3f}]") in page
    # the truth table holds the recovery numbers of the truth stage
    truth = json.loads((run / "truth" / "eval.json").read_text())
    rec = truth["reward_models"]["rm-gold"]
    assert any("rm-gold" in r[0] and f"{rec['spearman']:.3f}" in r and f"{rec['pair_accuracy']:.3f}" in r
               for r in _rows(page) if r)
    # every RL curve the report draws is a metric the RL trainer logs: no "–" in its table
    from ambient_rlhf.eval.report import RL_CURVES

    rl_rows = [r for r in _rows(page) if r and r[0] in {k for k, _ in RL_CURVES}]
    assert len(rl_rows) == len(RL_CURVES) and not [r for r in rl_rows if "–" in r], rl_rows
    # the data stage's counters and its own plots are in, and the figures of every section
    m = json.loads((run / "data" / "manifest.json").read_text())
    assert f"<td>threads.kept</td><td>{m['counts']['threads']['kept']}</td>" in page
    for section in ("data_counts_data", "data_counts_simulate", "rl_curves_rl", "win_rates", "true_utility_eval",
                    "training_losses", "rm_accuracy_rm_gold_on_AmbientSim", "true_vs_reward_eval", "frontier"):
        assert (run / REPORT_DIR / f"{section}.png").is_file(), section
    pngs = sorted((run / REPORT_DIR).glob("*.png"))
    assert len(_imgs(page)) == len(pngs)
