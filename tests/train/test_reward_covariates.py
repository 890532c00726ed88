"""Exposure- and length-aware Bradley-Terry (covariates), all candidate pairs, and the
length-decorrelation penalty of ``ambient rm``."""

import json
import math
import shutil

import pytest
import torch
from helpers import head_rm_config, make_data_dir

from ambient_rlhf import AmbientError
from ambient_rlhf.logging import read_jsonl
from ambient_rlhf.train import reward as R
from ambient_rlhf.train.reward.objective import CovariateModel, batch_loss, length_correlation_penalty


class Raw:
    """A stand-in reward model whose raw reward is the first head output."""

    @staticmethod
    def raw_reward(out):
        return out[:, 0]


def test_pairwise_loss_with_covariates_by_hand():
    # rows 0..3 with rewards 1.0, 0.5, -0.2, 0.3; pairs (0 over 1) and (2 over 3)
    out = torch.tensor([[1.0], [0.5], [-0.2], [0.3]])
    units = [R.Unit("t/a", [], rows=[0, 1]), R.Unit("t/b", [], rows=[2, 3])]
    pos = {0: 0, 1: 1, 2: 2, 3: 3}
    g = torch.tensor([0.1, 0.4, 0.6, -0.1])  # covariate terms, chosen then rejected per pair
    loss, acc = batch_loss("pairwise", Raw, out, pos, units, g)
    m1, m2 = (1.0 + 0.1) - (0.5 + 0.4), (-0.2 + 0.6) - (0.3 - 0.1)  # margins 0.2 and 0.2
    want = 0.5 * (math.log1p(math.exp(-m1)) + math.log1p(math.exp(-m2)))
    assert loss.item() == pytest.approx(want, abs=1e-6) and acc.item() == 1.0
    # without g the second pair is ordered wrong: accuracy 1/2
    assert batch_loss("pairwise", Raw, out, pos, units)[1].item() == 0.5


def test_length_correlation_penalty_by_hand():
    r = torch.tensor([1.0, 2.0, 3.0])
    assert length_correlation_penalty(r, torch.tensor([1.0, 2.0, 3.0])).item() == pytest.approx(1.0)
    assert length_correlation_penalty(r, torch.tensor([6.0, 4.0, 2.0])).item() == pytest.approx(1.0)
    # r = (1, 0, 1) against (0, 1, 2): centred (1/3, -2/3, 1/3) . (-1, 0, 1) = 0
    assert length_correlation_penalty(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0.0, 1.0, 2.0])).item() == \
        pytest.approx(0.0, abs=1e-7)
    # r = (0, 1, 3), l = (0, 0, 1): centred r (-4/3, -1/3, 5/3), l (-1/3, -1/3, 2/3)
    # cov = (4/9 + 1/9 + 10/9) = 15/9; |r|^2 = 42/9; |l|^2 = 6/9 -> corr^2 = 225 / 252
    assert length_correlation_penalty(torch.tensor([0.0, 1.0, 3.0]), torch.tensor([0.0, 0.0, 1.0])).item() == \
        pytest.approx(225 / 252, rel=1e-5)
    assert length_correlation_penalty(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0])).item() == 0.0
    # with decorrelation the batch loss grows by weight * corr^2
    out = torch.tensor([[0.0], [1.0], [3.0]])
    units = [R.Unit("t/a", [], rows=[2, 0])]
    base, _ = batch_loss("pairwise", Raw, out, {0: 0, 1: 1, 2: 2}, units)
    pen, _ = batch_loss("pairwise", Raw, out, {0: 0, 1: 1, 2: 2}, units, logwords=torch.tensor([0.0, 0.0, 1.0]),
                        decorrelation=2.0)
    assert pen.item() - base.item() == pytest.approx(2.0 * 225 / 252, rel=1e-5)


def test_covariate_model_standardises_and_describes():
    m = CovariateModel(["delay", "length"], [1.0, 2.0], [2.0, 0.5])
    with torch.no_grad():
        m.w.copy_(torch.tensor([0.5, -1.0]))
    x = torch.tensor([[3.0, 2.5]])  # standardised (1, 1)
    assert m(x).item() == pytest.approx(0.5 - 1.0)
    d = m.describe()
    assert d["per_std"] == {"delay": 0.5, "length": -1.0} and d["per_unit"] == {"delay": 0.25, "length": -2.0}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data_dir(tmp_path_factory.mktemp("rmcov") / "data", n_threads=36, k=4)


def cfg(data, out, *more):
    return head_rm_config(data, out, *more, eval_steps=2)


def test_all_pairs_with_covariates_train_save_and_resume(data, tmp_path):
    extra = ["pairs=all", "covariates=[delay,order,length]", "length_decorrelation=1.0", "max_steps=6",
             "save_steps=3"]
    full = R.train_reward(cfg(data, tmp_path / "full", *extra))
    meta = json.loads((full / "reward_config.json").read_text())
    cm = meta["covariate_model"]
    assert cm["features"] == ["delay", "order", "length"] and meta["pairs"] == "all"
    assert any(abs(v) > 1e-4 for v in cm["per_std"].values())  # the covariates were trained
    counts = json.loads((full / "manifest.json").read_text())["counts"]
    # every train thread: 2 MARKER answers (scores 20-30) over 2 others (0-5); the others
    # pass min_score=2 only sometimes, so the candidates are fewer than 4 per thread
    assert 0 < counts["train_candidate_pairs"] <= 24 * 4
    # resume after a kill at step 3 reproduces the run, covariate weights included
    part = tmp_path / "part"
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoints" / "step-6")
    for f in ("reward_config.json", "model.safetensors", "manifest.json", "README.md"):
        (part / f).unlink()
    R.train_reward(cfg(data, part, *extra, "resume=true"))
    a, b = read_jsonl(full / "metrics.jsonl"), read_jsonl(part / "metrics.jsonl")
    assert [r["rm/loss"] for r in a] == [r["rm/loss"] for r in b]
    assert json.loads((part / "reward_config.json").read_text())["covariate_model"] == cm


def test_covariate_options_are_validated(data, tmp_path):
    with pytest.raises(AmbientError, match="unknown"):
        R.train_reward(cfg(data, tmp_path / "a", "covariates=[karma]"))
    with pytest.raises(AmbientError, match="objective=pairwise"):
        R.train_reward(cfg(data, tmp_path / "b", "objective=tiers", "covariates=[delay]"))
    with pytest.raises(AmbientError, match="length_decorrelation"):
        R.train_reward(cfg(data, tmp_path / "c", "length_decorrelation=-1"))


def test_covariate_model_starts_at_the_covariates_only_fit():
    # P pairs whose preference follows the delay: the earlier answer wins with probability
    # sigmoid(2 * (delay_rejected - delay_chosen) / std).  The warm start is the ridge
    # logistic fit of the preference on the standardised difference; compare it with an
    # independent Newton solution of the same problem.
    import numpy as np

    rng = np.random.default_rng(0)
    P = 400
    da, db = rng.exponential(2.0, P), rng.exponential(2.0, P)
    first_wins = rng.random(P) < 1 / (1 + np.exp(-2.0 * (db - da) / 2.0))
    units = [R.Unit("t/x", [], cov=[[a], [b]] if w else [[b], [a]]) for a, b, w in zip(da, db, first_wins)]
    m = CovariateModel.fit(["delay"], units)
    x = np.array([v for u in units for v in u.cov], float).ravel()
    d = (x[0::2] - x[1::2]) / x.std()
    w = 0.0
    for _ in range(50):  # Newton on sum softplus(-d w) + w^2 / 2
        p = 1 / (1 + np.exp(d * w))
        g, h = -(d * p).sum() + w, (d * d * p * (1 - p)).sum() + 1.0
        w -= g / h
    assert m.w.item() == pytest.approx(w, rel=1e-4) and w < -0.5  # later answers lose


def _valid_loss_by_hand(model_dir, data) -> float:
    """Mean -log sigmoid(margin) over the valid time-rule pairs of ``data``, scored by the
    saved model through plain transformers (full forward, not the run's cached features);
    margin = raw reward difference + the saved length weight x log1p(words) difference."""
    import numpy as np
    import pandas as pd
    from transformers import AutoModelForSequenceClassification

    from ambient_rlhf.models.reward_inputs import RewardInputs

    meta = json.loads((model_dir / "reward_config.json").read_text())
    std = json.loads((model_dir / "config.json").read_text())["ambient_reward"]["norm_std"]
    w_len = meta["covariate_model"]["per_unit"]["length"]
    hf = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    inputs = RewardInputs.from_pretrained(model_dir)
    p = pd.read_parquet(data / "pairs.parquet")
    p = p[p["split"] == "valid"]
    assert len(p) >= 6

    def logits(texts):
        b = inputs.batch(list(p["prompt"]), texts)
        with torch.no_grad():
            return hf(**b).logits[:, 0].double().numpy()

    def words(texts):
        return np.log1p([len(str(t).split()) for t in texts])

    m = std * (logits(list(p["chosen"])) - logits(list(p["rejected"]))) + \
        w_len * (words(p["chosen"]) - words(p["rejected"]))
    return float(np.mean(np.logaddexp(0.0, -m)))


def test_weight_decay_grid_keeps_the_value_with_the_lowest_valid_loss(data, tmp_path):
    # two strengths far apart: 0 (a free head) and 19 (AdamW's decay step, lr x 19 = 0.95 of the
    # weights each step, leaves the head near 0)
    extra = ["pairs=all", "covariates=[delay,order,length]", "max_steps=6", "standardize_features=true",
             "eval_max_pairs=0", "learning_rate=0.05"]
    grid = R.train_reward(cfg(data, tmp_path / "grid", *extra, "weight_decay_grid=[19.0,0.0]"))
    sel = json.loads((grid / "manifest.json").read_text())["counts"]["weight_decay_selection"]
    assert json.loads((grid / "manifest.json").read_text())["timings"]["weight_decay_selection_seconds"] > 0
    assert sel["grid"] == [19.0, 0.0] and set(sel["tried"]) == {"19.0", "0.0"}
    # each candidate trained on its own (weight_decay=w) and scored by hand gives the loss
    # that the selection recorded for it
    by_hand = {}
    for w in (19.0, 0.0):
        d = R.train_reward(cfg(data, tmp_path / f"wd{w:g}", *extra, f"weight_decay={w}"))
        by_hand[w] = _valid_loss_by_hand(d, data)
        assert sel["tried"][repr(w)]["valid_log_loss"] == pytest.approx(by_hand[w], abs=1e-4)
    assert by_hand[0.0] != pytest.approx(by_hand[19.0], abs=1e-3)  # the choice is not a tie
    best = min(by_hand, key=by_hand.get)
    assert sel["chosen"] == best
    assert json.loads((grid / "reward_config.json").read_text())["weight_decay"] == best
    # the saved model is the one trained with the chosen value: selection left no trace
    from safetensors.torch import load_file

    a, b = load_file(grid / "model.safetensors"), load_file(tmp_path / f"wd{best:g}" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_weight_decay_grid_is_validated(data, tmp_path):
    with pytest.raises(AmbientError, match="weight_decay_grid"):
        R.train_reward(cfg(data, tmp_path / "a", "weight_decay_grid=[1.0]", "train_layers=1"))
    with pytest.raises(AmbientError, match="weight_decay_grid"):
        R.train_reward(cfg(data, tmp_path / "b", "weight_decay_grid=[-1.0]"))
    with pytest.raises(AmbientError, match="pairwise"):
        R.train_reward(cfg(data, tmp_path / "c", "weight_decay_grid=[1.0]", "objective=tiers"))


def test_linear_bradley_terry_fit_equals_ridge_logistic_regression():
    """fit_linear_bradley_terry against scikit-learn's L2 logistic regression (no
    intercept) on the pair differences, signs flipped at random: the same problem with
    C = 1 / (l2 P).  Unpenalised covariates: scaled by 1000 in scikit-learn, where the
    penalty on their coefficient (v / 1000)^2 vanishes."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from ambient_rlhf.train.reward.objective import fit_linear_bradley_terry

    rng = np.random.default_rng(0)
    n, d, P, l2 = 60, 5, 300, 0.01
    x = rng.normal(size=(n, d))
    c = rng.integers(0, n, P)
    j = (c + 1 + rng.integers(0, n - 1, P)) % n
    true_w = rng.normal(size=d)
    cov = rng.normal(size=(P, 2))
    s = rng.uniform(0.5, 2.0, P)
    sign = np.where(np.arange(P) % 2 == 0, 1.0, -1.0)

    def sk(X):
        m = LogisticRegression(fit_intercept=False, C=1 / (l2 * P), tol=1e-12, max_iter=100000)
        return m.fit(X * sign[:, None], (sign > 0).astype(int), sample_weight=s).coef_[0]

    w, v = fit_linear_bradley_terry(torch.tensor(x @ np.diag(true_w)), torch.tensor(c), torch.tensor(j),
                                    weight=torch.tensor(s), l2=l2)
    assert v.numel() == 0
    assert np.abs(w.numpy() - sk(x[c] @ np.diag(true_w) - x[j] @ np.diag(true_w))).max() < 1e-5
    w, v = fit_linear_bradley_terry(torch.tensor(x), torch.tensor(c), torch.tensor(j), torch.tensor(cov),
                                    torch.tensor(s), l2=l2)
    want = sk(np.hstack([x[c] - x[j], cov * 1000.0]))
    assert np.abs(w.numpy() - want[:d]).max() < 1e-4 and np.abs(v.numpy() - want[d:] * 1000.0).max() < 1e-3


def test_head_fit_lbfgs_trains_the_head_without_steps(data, tmp_path):
    out = R.train_reward(cfg(data, tmp_path / "lb", "head_fit=lbfgs", "covariates=[length]", "standardize_features=true",
                             "weight_decay=0.01", "eval_split=train"))
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["head_fit"] == "lbfgs" and m["steps"] == 0
    # the fit is timed although it takes no steps (benchmarks/recipe.py counts it); no grid here
    assert m["timings"]["loop_seconds"] > 0 and m["timings"]["weight_decay_selection_seconds"] < 0.05
    # the data's signal: the two MARKER answers of every thread outscore the rest
    assert json.loads((out / "eval.json").read_text())["accuracy"]["value"] > 0.95
    with pytest.raises(AmbientError, match="head_fit=lbfgs"):
        R.train_reward(cfg(data, tmp_path / "x", "head_fit=lbfgs", "objective=tiers"))
    with pytest.raises(AmbientError, match="head_fit=lbfgs"):
        R.train_reward(cfg(data, tmp_path / "y", "head_fit=lbfgs", "train_layers=1"))
