"""Length controls of the reward-model evaluation: length-ratio buckets, the similar-length
subset, and the cross-validated "beyond length" logistic regressions."""

import json
import math

import numpy as np
import pytest
from scipy import integrate, optimize

from ambient_rlhf.eval import reward_eval as E
from ambient_rlhf.eval import reward_metrics


def _sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def test_log_word_ratio_and_length_buckets():
    w = lambda n: " ".join(["word"] * n)  # noqa: E731  a text of n words
    chosen = [w(4), w(11), w(12), w(10), w(3), w(2), w(3), ""]
    rejected = [w(4), w(10), w(10), w(12), w(2), w(1), w(1), "one"]
    lr = E.log_word_ratio(chosen, rejected)
    # by hand: log(4/4)=0, log(11/10)=0.0953, log(12/10)=0.1823, log(10/12)=-0.1823,
    # log(3/2)=0.4055, log(2/1)=0.6931, log(3/1)=1.0986, "" counts one word: log(1/1)=0
    want = [0.0, 0.0953102, 0.1823216, -0.1823216, 0.4054651, 0.6931472, 1.0986123, 0.0]
    assert np.allclose(lr, want, atol=1e-6)
    # edges 0, 0.1, 0.25, 0.5, 1, inf: [0, 0.1) holds pairs 0, 1, 7; [0.1, 0.25) pairs 2, 3;
    # [0.25, 0.5) pair 4; [0.5, 1) pair 5; [1, inf) pair 6
    acc = np.array([1, 0, 1, 0, 1, 1, 0, 0.5])
    rows = E.bucket_table(E.LENGTH_EDGES, np.abs(lr), {"accuracy": acc}, fmt=lambda x: f"{x:g}")
    assert [(r["bucket"], r["n"]) for r in rows] == [("[0, 0.1)", 3), ("[0.1, 0.25)", 2), ("[0.25, 0.5)", 1),
                                                     ("[0.5, 1)", 1), ("[1, inf)", 1)]
    assert [r["accuracy"] for r in rows] == [0.5, 0.5, 1.0, 1.0, 0.0]  # (1+0+0.5)/3, (1+0)/2, ...
    # similar length (< 0.25): the five pairs of the first two buckets
    assert (np.abs(lr) < E.SIMILAR_LENGTH).tolist() == [True] * 4 + [False] * 3 + [True]


def test_fit_logistic_matches_scipy():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 2))
    y = (rng.random(300) < _sig(X @ np.array([1.5, -0.7]))).astype(float)
    l2 = 1.0

    def obj(w):  # the same penalised log-loss, minimised by an independent optimiser
        z = X @ w
        return np.sum(np.logaddexp(0, z) - y * z) + 0.5 * l2 * w @ w

    ref = optimize.minimize(obj, np.zeros(2), method="BFGS", options={"gtol": 1e-10}).x
    w = E.fit_logistic(X, y, l2)
    assert np.allclose(w, ref, atol=1e-5)
    # no intercept: flipping a pair's orientation (x -> -x, y -> 1-y) leaves the loss unchanged
    assert np.allclose(E.fit_logistic(-X, 1 - y, l2), w, atol=1e-10)
    # separable data stay finite thanks to the ridge
    assert np.all(np.isfinite(E.fit_logistic(X, (X[:, 0] > 0).astype(float), l2)))


def test_grouped_folds_never_split_a_thread():
    rng = np.random.default_rng(0)
    threads = np.repeat([f"t{i}" for i in range(23)], rng.integers(1, 12, size=23))
    rng.shuffle(threads)
    folds = E.grouped_folds(threads, 5, seed=7)
    for f in range(5):
        test, train = set(threads[folds == f]), set(threads[folds != f])
        assert test and not (test & train)
    # greedy to the emptiest fold: fold sizes differ by at most the largest thread (11)
    sizes = np.bincount(folds, minlength=5)
    assert sizes.max() - sizes.min() <= 11
    assert (E.grouped_folds(threads, 5, seed=7) == folds).all()


def test_beyond_length_uses_thread_folds(monkeypatch):
    seen = []
    real = E.grouped_folds

    def spy(groups, k, seed=0):
        seen.append((np.asarray(groups).copy(), k))
        return real(groups, k, seed)

    monkeypatch.setattr(reward_metrics, "grouped_folds", spy)  # where beyond_length looks it up
    rng = np.random.default_rng(1)
    threads = np.repeat(np.arange(3), 10)
    r = E.beyond_length(rng.normal(size=30), rng.normal(size=30), threads, k=5, n_boot=50)
    # three threads: at most three folds, and the folds come from the thread labels
    assert r["folds"] == 3 and len(seen) == 1 and seen[0][1] == 3 and (seen[0][0] == threads).all()
    one = E.beyond_length(np.ones(4), np.ones(4), np.zeros(4), n_boot=50)
    assert one["folds"] == 0 and one["n_threads"] == 1


def test_reward_equal_to_length_adds_nothing():
    # preference drawn from the length difference; the reward IS the length (d_reward =
    # d_length).  After scaling by the RMS both columns are the same u, so the two-feature
    # fit is L((w1 + w2) u) + l2/2 (w1^2 + w2^2), minimised at w1 = w2 = s/2: the length-only
    # model with a ridge of l2/2 instead of l2.  Same signs -> accuracy gain exactly 0;
    # log-loss differs only by the halved ridge on 300+ pairs (< 1e-3).
    rng = np.random.default_rng(2)
    n = 400
    d_len = rng.normal(scale=0.7, size=n)
    first = rng.random(n) < _sig(2.0 * d_len)
    d_len = np.where(first, d_len, -d_len)  # chosen minus rejected
    threads = np.repeat(np.arange(80), 5)
    r = E.beyond_length(d_len, d_len.copy(), threads, n_boot=200)
    assert r["gain"]["accuracy"]["value"] == 0.0
    assert abs(r["gain"]["log_loss"]["value"]) < 1e-3
    assert r["coef"]["length"] == pytest.approx(r["coef"]["reward"], rel=1e-6)  # w1 = w2
    # and the length-only model gets what sign(d_len) gets: E[sigmoid(2|Z|)], Z ~ N(0, 0.7^2)
    bayes = integrate.quad(lambda z: _sig(2 * abs(z)) * math.exp(-z * z / (2 * 0.49)) / math.sqrt(2 * math.pi * 0.49),
                           -8, 8)[0]
    assert abs(r["length_only"]["accuracy"]["value"] - bayes) < 0.06  # 0.75; sampling SE ~0.022

    # a reward that is length plus noise unrelated to the preference gives no evidence of a gain
    noisy = d_len + rng.normal(scale=0.7, size=n) * np.where(first, 1, -1)
    r = E.beyond_length(d_len, noisy, threads, n_boot=200)
    assert r["gain"]["log_loss"]["ci_low"] < 0 and r["gain"]["accuracy"]["ci_low"] < 0


def hidden_world():
    """600 pairs in 60 threads: the preference follows a hidden feature h,
    P(A preferred) = sigmoid(3 (h_A - h_B)); the length difference is independent of it.
    Returns the orientation o (+1: the first answer was preferred), d_len, d_h, threads, rng."""
    rng = np.random.default_rng(4)
    n = 600
    d_h, d_len = rng.normal(size=n), rng.normal(scale=0.5, size=n)
    first = rng.random(n) < _sig(3.0 * d_h)
    return np.where(first, 1.0, -1.0), d_len, d_h, np.repeat(np.arange(60), 10), rng


def test_hidden_feature_carried_by_reward_only():
    # the preference depends on a hidden feature h, P(A preferred) = sigmoid(3 (h_A - h_B));
    # the length difference is independent of it (symmetric, so chosen-minus-rejected length
    # carries no sign information -> length-only at chance 0.5); the reward is h.
    # The best rule, sign(d_h), is right with probability E[sigmoid(3 |Z|)], Z ~ N(0, 1).
    o, d_len, d_h, threads, rng = hidden_world()
    r = E.beyond_length(o * d_len, o * d_h, threads, n_boot=300)
    bayes = integrate.quad(lambda z: _sig(3 * abs(z)) * math.exp(-z * z / 2) / math.sqrt(2 * math.pi), -8, 8)[0]
    assert abs(r["length_only"]["accuracy"]["value"] - 0.5) < 0.06  # SE ~0.02 at n=600
    assert abs(r["length_reward"]["accuracy"]["value"] - bayes) < 0.05  # 0.81
    assert r["gain"]["accuracy"]["ci_low"] > 0.2 and r["gain"]["log_loss"]["ci_low"] > 0.1
    assert abs(r["length_only"]["log_loss"]["value"] - math.log(2)) < 0.02  # chance: log 2
    # true coefficients 3 and 0; standard errors about 0.3 and 0.2 at this n
    assert abs(r["coef"]["reward"] - 3.0) < 0.9 and abs(r["coef"]["length"]) < 0.7


def test_reversed_reward_does_not_count_as_beyond_length():
    # the same world as above, but the reward is -h: anti-correlated with the preference.
    # An unconstrained fit would take it with a negative coefficient and "gain" ~0.3 in
    # accuracy; only a positive coefficient may count, so the length+reward model falls
    # back to length alone in every fold (gain exactly 0) and the verdict says reversed.
    o, d_len, d_h, threads, rng = hidden_world()
    r = E.beyond_length(o * d_len, -o * d_h, threads, n_boot=300)
    assert r["gain"]["accuracy"]["value"] == 0.0 and r["gain"]["log_loss"]["value"] == 0.0
    assert r["coef"]["reward"] < -2.0 and r["verdict"] == "reversed"
    assert E.beyond_length(o * d_len, o * d_h, threads, n_boot=300)["verdict"] == "adds"
    # a reward unrelated to the preference: no verdict of either kind
    assert E.beyond_length(o * d_len, rng.normal(size=len(o)), threads, n_boot=300)["verdict"] == "none"


def test_beyond_length_claims_no_interval_under_20_threads():
    rng = np.random.default_rng(5)
    d_h = rng.normal(size=190)
    threads = np.repeat(np.arange(19), 10)  # 19 threads
    r = E.beyond_length(rng.normal(size=190), d_h, threads, n_boot=100)
    assert r["verdict"] == "too_few_threads" and r["n_threads"] == 19
    assert r["gain"]["log_loss"]["ci_low"] is None and r["gain"]["log_loss"]["ci_high"] is None
    threads20 = np.arange(190) % 20  # 20 threads
    assert E.beyond_length(rng.normal(size=190), d_h, threads20, n_boot=100)["gain"]["log_loss"]["ci_low"] is not None


def test_evaluate_reward_reports_length_controls(tmp_path, tiny_model_path):
    from helpers import make_data_dir

    from ambient_rlhf.models.heads import ScalarHeadModel
    from ambient_rlhf.models.load import load_causal_lm, load_tokenizer

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    data = make_data_dir(tmp_path / "data", n_threads=24, k=4)
    rm = ScalarHeadModel(load_causal_lm(tiny_model_path), meta={"max_prompt_tokens": 32, "max_response_tokens": 32}).eval()
    rm.tokenizer = load_tokenizer(tiny_model_path)
    res = E.evaluate_reward("tiny", data, split="test", out=tmp_path / "ev", model=rm, n_boot=50, plots=False)
    # 4 test threads x 2 MARKER answers x 2 others = 16 pairs
    assert res["n_pairs"] == 16
    assert sum(r["n"] for r in res["by_length_ratio"]) == 16
    assert set(res["by_length_ratio"][0]) == {"bucket", "n", "accuracy", "longer_wins"}
    sl, bl = res["similar_length"], res["beyond_length"]
    assert sl["n"] == sum(r["n"] for r in res["by_length_ratio"] if r["bucket"] in ("[0, 0.1)", "[0.1, 0.25)"))
    assert bl["folds"] == 4 and bl["n"] == 16 and bl["n_threads"] == 4
    saved = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert saved["beyond_length"]["gain"]["accuracy"]["n"] == 16
    assert "beyond length: length-only" in E.format_summary(res)


def test_report_shows_length_controls():
    from ambient_rlhf.eval import report

    ci = lambda v, lo, hi: {"value": v, "ci_low": lo, "ci_high": hi, "n": 300}  # noqa: E731
    e = {"accuracy": ci(0.6, 0.55, 0.65), "baselines": {"longer_wins": ci(0.65, 0.6, 0.7)},
         "similar_length": {"max_abs_log_word_ratio": 0.25, "n": 90, "n_threads": 30,
                            "accuracy": ci(0.52, 0.45, 0.6), "longer_wins": ci(0.5, 0.44, 0.57)},
         "by_length_ratio": [{"bucket": "[0, 0.1)", "n": 40, "accuracy": 0.5, "longer_wins": 0.48}],
         "beyond_length": {"folds": 5, "n": 300, "n_threads": 60,
                           "length_only": {"accuracy": ci(0.65, 0.6, 0.7), "log_loss": ci(0.64, 0.62, 0.66)},
                           "length_reward": {"accuracy": ci(0.66, 0.61, 0.71), "log_loss": ci(0.63, 0.61, 0.65)},
                           "gain": {"accuracy": ci(0.01, -0.01, 0.03), "log_loss": ci(0.01, 0.002, 0.02)}}}
    names = [n for n, _ in report.rm_bars(e)]
    assert "reward model, similar length (n=90)" in names and "longer wins, similar length (n=90)" in names
    html = report.rm_length_html(e)
    assert "adds information beyond length" in html and "0.640 [0.620, 0.660]" in html and "[0, 0.1)" in html
    e["beyond_length"]["gain"]["log_loss"] = ci(0.01, -0.002, 0.02)  # interval reaches 0
    assert "adds no clear information beyond length" in report.rm_length_html(e)
    # the verdict written by rm eval wins over the numbers: a reversed reward never "adds"
    e["beyond_length"]["gain"]["log_loss"] = ci(0.05, 0.02, 0.08)
    e["beyond_length"]["verdict"] = "reversed"
    html = report.rm_length_html(e)
    assert "is reversed" in html and "adds information beyond length" not in html
    e["beyond_length"].pop("verdict")
    e["beyond_length"]["coef"] = {"length": 1.0, "reward": -0.5}  # an old eval.json: the sign decides
    assert "adds no clear information beyond length" in report.rm_length_html(e)
    assert report.rm_length_html({}) == ""  # an eval.json from before these keys


def test_report_shows_the_which_part_table():
    from ambient_rlhf.eval import report

    ci = lambda v: {"value": v, "ci_low": v - 0.05, "ci_high": v + 0.05, "n": 10}  # noqa: E731
    e = {"which_part": {"sets": {"all": {"n": 10, "reward model": ci(0.6), "longer wins": ci(0.65),
                                         "bag of words": ci(0.62), "earlier wins": ci(0.0)},
                                 "chosen shorter": {"n": 4, "reward model": ci(0.4), "longer wins": ci(0.0),
                                                    "bag of words": ci(0.2), "earlier wins": ci(0.0)}},
                        "spearman_length": {"reward model": 0.31, "longer wins": 1.0, "bag of words": 0.8}}}
    html = report.rm_length_html(e)
    assert "Which part is learned" in html and "chosen shorter" in html and "bag of words" in html
    assert "0.400 [0.350, 0.450]" in html and "0.31" in html
    assert report.rm_length_html({}) == ""
