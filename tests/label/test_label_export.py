"""``ambient label export``: pairs in the data stage's layout, agreement derived by hand,
and the export -> ``ambient rm`` (explicit + ambient pairs, weighted) -> ``rm eval`` path."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from helpers import make_data_dir

from ambient_rlhf import AmbientError
from ambient_rlhf.cli import main
from ambient_rlhf.data import schema
from ambient_rlhf.label.export import agreement, cohen_kappa, export_labels, wilson
from ambient_rlhf.label.items import Item, item_id
from ambient_rlhf.label.store import Store


def make_item(kind: str, name: str) -> Item:
    prompt, a, b = f"prompt of {name}", f"answer {name}-a", f"answer {name}-b"
    return Item(item_id(kind, name, prompt, a, b), kind, name, prompt, a, b, "test", "askfoo")


ITEMS = {n: make_item("upvote" if n.startswith("u") else "policy_vs_reference", n) for n in ("u1", "u2", "u3", "p1", "p2")}
# what each labeller picked: a (for upvote items the upvoted answer, else the policy's), b, tie, skip
PLAN = {
    "alice": {"u1": "a", "u2": "b", "u3": "a", "p1": "a", "p2": "b"},
    "bob": {"u1": "a", "u2": "b", "u3": "skip", "p1": "tie"},
    "carol": {"u1": "b", "p2": "b", "p1": "a>tie"},  # a, then undo and tie (a change of mind)
}


def label(store: Store, who: str, plan: dict[str, str]) -> None:
    """Judge as a labeller would: take the next item, press the side the plan says."""
    by_id = {it.item_id: n for n, it in ITEMS.items()}
    todo = dict(plan)
    k = 0
    while todo:
        nxt = store.next_item(who)
        name = by_id[nxt["item_id"]]
        w, _, then = todo.pop(name, "skip").partition(">")
        if w in ("a", "b"):
            a_left = nxt["left"] == ITEMS[name].a
            choice = "left" if (w == "a") == a_left else "right"
        else:
            choice = w
        assert store.judge(who, nxt["item_id"], choice, "", f"{who}-{k:04d}") == "stored"
        k += 1
        if then:  # a change of mind: the undone row stays in the database, not in the export
            assert store.undo(who) == nxt["item_id"]
            assert store.next_item(who)["item_id"] == nxt["item_id"]  # back on screen, same sides
            assert store.judge(who, nxt["item_id"], then, "close call", f"{who}-{k:04d}u") == "stored"


@pytest.fixture
def labelled(tmp_path):
    store = Store(tmp_path / "labels.sqlite")
    store.add_items(list(ITEMS.values()))
    for who, plan in PLAN.items():
        label(store, who, plan)
    store.close()
    return tmp_path / "labels.sqlite"


PLAN_FINAL = {who: {n: w.split(">")[-1] for n, w in p.items()} for who, p in PLAN.items()}


def test_wilson_and_kappa_against_references():
    from scipy.stats import binomtest
    from sklearn.metrics import cohen_kappa_score

    for k, n in ((3, 6), (0, 5), (7, 7), (41, 97)):
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-6)
    assert wilson(0, 0) is None
    x, y = ["a", "b", "a", "tie", "b"], ["a", "b", "tie", "tie", "a"]
    assert cohen_kappa(x, y) == pytest.approx(cohen_kappa_score(x, y), abs=1e-12)
    assert cohen_kappa(["a", "a"], ["a", "a"]) is None


def test_export_layout_and_agreement(labelled, tmp_path):
    out = tmp_path / "explicit"
    m = export_labels(labelled, out)
    js = Store(labelled).live_judgements()
    got = {(j["labeller"], next(n for n, it in ITEMS.items() if it.item_id == j["item_id"])): j["winner"] for j in js}
    want = {(who, n): w for who, p in PLAN_FINAL.items() for n, w in p.items()}
    # bob and carol skipped the items outside their plan
    want.update({(who, n): "skip" for who in PLAN_FINAL for n in ITEMS if n not in PLAN_FINAL[who]})
    assert got == want

    # by hand, skips left out.  Items with two or more labellers: u1 (alice a, bob a, carol b),
    # u2 (alice b, bob b), p1 (alice a, bob tie, carol tie), p2 (alice b, carol b).
    # Labeller pairs: u1 1 of 3 agree, u2 1 of 1, p1 1 of 3 (bob = carol), p2 1 of 1 -> 4 of 8.
    a = m["agreement"]
    assert (a["labellers"]["n"], a["labellers"]["agree"], a["labellers"]["items"]) == (8, 4, 4)
    # alice|bob: u1 a/a, u2 b/b, p1 a/tie -> 2 of 3; kappa: po 2/3, pe (2*1 + 1*1)/9 = 1/3 -> 0.5
    ab = a["labellers"]["by_pair"]["alice|bob"]
    assert (ab["n"], ab["agree"]) == (3, 2) and ab["kappa"] == pytest.approx(0.5)
    # alice|carol: u1 a/b, p1 a/tie, p2 b/b -> 1 of 3; pe = (a:2*0 + b:1*2)/9 = 2/9 -> (1/3 - 2/9)/(7/9) = 1/7
    ac = a["labellers"]["by_pair"]["alice|carol"]
    assert (ac["n"], ac["agree"]) == (3, 1) and ac["kappa"] == pytest.approx(1 / 7)
    # bob|carol: u1 a/b, p1 tie/tie -> 1 of 2; pe = (a:1*0 + tie:1*1)/4 = 1/4 -> (1/2 - 1/4)/(3/4) = 1/3
    bc = a["labellers"]["by_pair"]["bob|carol"]
    assert (bc["n"], bc["agree"]) == (2, 1) and bc["kappa"] == pytest.approx(1 / 3)
    # upvotes: decisive judgements u1 a, a, b; u2 b, b; u3 a -> 3 of 6 pick the upvoted answer
    assert (a["upvotes"]["n"], a["upvotes"]["agree"], a["upvotes"]["ties"]) == (6, 3, 0)
    # policy: p1 alice a; p2 alice b, carol b -> 1 of 3 prefer the policy; p1 bob tie, carol tie
    assert (a["policy"]["n"], a["policy"]["agree"], a["policy"]["ties"]) == (3, 1, 2)
    # 5 items x 3 labellers, each judged once (4 skips: bob u3, p2; carol u2, u3), plus carol's undone row
    assert (m["counts"]["live_judgements"], m["counts"]["judgement_rows"], m["counts"]["skips"]) == (15, 16, 4)
    assert m["counts"]["pairs"] == 9 and m["counts"]["undone"] == 1 and m["community"] == "askfoo"

    pairs = pd.read_parquet(out / schema.PAIRS_FILE)
    assert set(schema.PAIR_COLUMNS) <= set(pairs.columns) and len(pairs) == 9
    assert (pairs["split"] == "train").all() and pairs["chosen_score"].isna().all()
    for r in pairs.itertuples():
        name = r.thread_id
        w = PLAN_FINAL[r.labeller][name]
        assert (r.chosen, r.rejected) == ((ITEMS[name].a, ITEMS[name].b) if w == "a" else (ITEMS[name].b, ITEMS[name].a))
    resp = pd.read_parquet(out / schema.RESPONSES_FILE)
    assert set(schema.RESPONSE_COLUMNS) <= set(resp.columns) and len(resp) == 10  # both answers of 5 items
    assert json.loads((out / "manifest.json").read_text())["stage"] == "label"
    with pytest.raises(Exception, match="exists"):
        export_labels(labelled, out)
    with pytest.raises(AmbientError, match="holds the database"):  # --overwrite would delete it
        export_labels(labelled, labelled.parent, overwrite=True)
    assert labelled.is_file()

    # the report's section reads the export: the hand-derived numbers, escaped
    from ambient_rlhf.eval.report import write_report

    run = tmp_path / "run"
    export_labels(labelled, run / "labels")
    page = write_report(run).read_text()
    sec = page[page.index("id='labels'"):page.index("id='rl'")]
    assert "9 exported pairs from 15 judgements by 3 labeller(s) on 5 items (2 ties, 4 skips)" in sec
    assert "<td>a person agrees with the upvotes</td><td>0.500 [0.188, 0.812]</td><td>6</td>" in sec
    assert "<td>alice|bob</td><td>0.667</td><td>3</td><td>0.500</td>" in sec
    # an export inside a run directory is not taken for a data directory of upvote pairs
    from ambient_rlhf.label.items import find_items

    with pytest.raises(AmbientError, match="no samples.jsonl"):
        find_items([str(run)])


def test_agreement_of_no_judgements_is_empty():
    a = agreement([])
    assert a["labellers"]["n"] == 0 and a["labellers"]["rate"] is None and a["upvotes"]["low"] is None


def test_export_rm_rm_eval(labelled, tmp_path, capsys):
    explicit = tmp_path / "explicit"
    assert main(["label", "export", "--db", str(labelled), "--out", str(explicit)]) == 0
    printed = capsys.readouterr().out
    assert "9 pairs from" in printed and "agree with the upvotes: 0.500" in printed
    ambient = make_data_dir(tmp_path / "askfoo", n_threads=12, k=3, seed=1)
    from ambient_rlhf.train.reward.config import RewardConfig
    from ambient_rlhf.train.reward.units import load_units

    units = load_units(RewardConfig(data=[str(ambient), str(explicit)], data_weights=[1.0, 3.0], out="x"), "train")
    n_ambient = len(pd.read_parquet(ambient / schema.PAIRS_FILE).query("split == 'train'"))
    assert [u.weight for u in units] == [1.0] * n_ambient + [3.0] * 9
    # with exposure covariates and all candidate pairs: the explicit pairs are still its 9
    # choices, and both answers of each get the same covariates (a choice has no exposure)
    cov = load_units(RewardConfig(data=[str(ambient), str(explicit)], covariates=["delay", "length"], pairs="all",
                                  out="x"), "train")
    assert len(cov) > 9 and [u.cov for u in cov[-9:]] == [[[0.0, 0.0], [0.0, 0.0]]] * 9
    assert [u.texts[0][1] for u in cov[-9:]] == list(pd.read_parquet(explicit / schema.PAIRS_FILE)["chosen"])
    rm = tmp_path / "rm"
    assert main(["rm", "--data", str(ambient), str(explicit), "--model", "tiny-random", "--out", str(rm),
                 "max_steps=3", "batch_size=4", "data_weights=[1,3]", "eval_split=", "covariates=[delay,length]"]) == 0
    man = json.loads((rm / "manifest.json").read_text())
    assert man["config"]["data_weights"] == [1.0, 3.0] and man["counts"]["train_units"] == n_ambient + 9
    assert man["counts"]["train_explicit_pairs"] == 9
    losses = [json.loads(line)["rm/loss"] for line in (rm / "metrics.jsonl").read_text().splitlines()
              if "rm/loss" in line]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert main(["rm", "eval", "--model", str(rm), "--data", str(explicit), "--split", "train",
                 "--loglik-model", "none", "--out", str(tmp_path / "ev")]) == 0
    ev = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert ev["n_pairs"] == 9, sorted(ev)
    capsys.readouterr()
    assert main(["rm", "--data", str(ambient), str(explicit), "--model", "tiny-random", "--out", str(tmp_path / "r2"),
                 "data_weights=[1]"]) == 2
    assert "one per directory" in capsys.readouterr().err
