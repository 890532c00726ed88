"""Items read from the project's outputs, and the store's rules (order, sides, exactly
once, undo), without a server."""

from __future__ import annotations

import json

import pytest
from label_fixtures import sample_rows, write_eval_dir
from helpers import make_data_dir

from ambient_rlhf import AmbientError
from ambient_rlhf.label.items import find_items
from ambient_rlhf.label.store import Conflict, Store, order_key, resolve


def test_resolve_by_hand():
    assert [resolve(c, "a") for c in ("left", "right", "tie", "skip")] == ["a", "b", "tie", "skip"]
    assert [resolve(c, "b") for c in ("left", "right", "tie", "skip")] == ["b", "a", "tie", "skip"]


def test_find_items_in_a_run_directory(tmp_path):
    run = tmp_path / "run"
    write_eval_dir(run / "eval", 6)
    write_eval_dir(run / "eval-goal", 4)  # the same first 4 rows: the same items, kept once
    data = make_data_dir(run / "data", n_threads=12, k=3, seed=1)
    counts: dict = {}
    items = find_items([str(run)], max_upvote_pairs=5, seed=0, counts=counts)
    assert counts == {"policy_vs_reference": 10, "upvote": 5, "duplicates": 4}
    kinds = [i.kind for i in items]
    assert kinds.count("policy_vs_reference") == 6 and kinds.count("upvote") == 5
    pol = next(i for i in items if i.kind == "policy_vs_reference" and i.thread_id == "t01")
    assert (pol.a, pol.b) == (sample_rows(6)[1]["policy"], sample_rows(6)[1]["reference"])
    assert pol.source.endswith("samples.jsonl:2")
    import pandas as pd

    pairs = pd.read_parquet(data / "pairs.parquet")
    for it in (i for i in items if i.kind == "upvote"):  # a = the upvoted answer
        assert ((pairs["chosen"] == it.a) & (pairs["rejected"] == it.b) & (pairs["thread_id"] == it.thread_id)).any()
    # the same sources again: the same ids (a restart adds nothing)
    assert [i.item_id for i in find_items([str(run)], 5, 0)] == [i.item_id for i in items]
    # a split filter; all pairs with 0
    test_only = find_items([str(data)], 0, 0, upvote_split="test")
    assert len(test_only) == (pairs["split"] == "test").sum()


def test_bad_sources_name_file_and_line(tmp_path):
    ev = write_eval_dir(tmp_path / "eval", 3)
    with (ev / "samples.jsonl").open("a") as f:
        f.write(json.dumps({"thread_id": "t9", "prompt": "p", "policy": 3, "reference": "r"}) + "\n")
    with pytest.raises(AmbientError, match=r"samples.jsonl:4: field 'policy'"):
        find_items([str(ev)])
    (ev / "samples.jsonl").write_text("{oops\n")
    with pytest.raises(AmbientError, match=r"samples.jsonl:1: not JSON"):
        find_items([str(ev)])
    with pytest.raises(AmbientError, match="no such file"):
        find_items([str(tmp_path / "absent")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(AmbientError, match="no samples.jsonl"):
        find_items([str(tmp_path / "empty")])


def test_store_order_sides_and_exactly_once(tmp_path):
    items = find_items([str(write_eval_dir(tmp_path / "eval", 8))])
    db = tmp_path / "l.sqlite"
    s = Store(db)
    assert s.add_items(items) == 8 and s.add_items(items) == 0
    first = s.next_item("ann")
    assert s.next_item("ann") == first  # shown again until judged, with the same sides
    s.close()
    s = Store(db)  # a restart: the same item, the same sides
    assert s.next_item("ann") == first
    with pytest.raises(Conflict, match="not shown"):
        s.judge("ann", items[0].item_id if items[0].item_id != first["item_id"] else items[1].item_id,
                "left", "", "sub-000001")
    with pytest.raises(KeyError):
        s.judge("ann", "f" * 20, "left", "", "sub-000002")
    assert s.judge("ann", first["item_id"], "right", "", "sub-000003") == "stored"
    assert s.judge("ann", first["item_id"], "right", "", "sub-000003") == "duplicate"
    with pytest.raises(Conflict, match="already judged"):
        s.judge("ann", first["item_id"], "left", "", "sub-000004")
    assert s.progress("ann") == {"done": 1, "total": 8}
    # undo: the item comes back first; a new judgement is a new row, the old one stays
    assert s.undo("ann") == first["item_id"] and s.next_item("ann") == first
    assert s.judge("ann", first["item_id"], "left", "", "sub-000005") == "stored"
    assert s.counts() == {"items": 8, "judgement_rows": 2, "undone": 1, "labellers": 1}
    # two labellers: each sees every item, in an order of their own
    order = {}
    for who in ("ann", "ben"):
        seq = []
        while (nxt := s.next_item(who)) is not None:
            seq.append(nxt["item_id"])
            s.judge(who, nxt["item_id"], "skip", "", f"{who}-{len(seq):06d}")
        order[who] = seq
    ids = {i.item_id for i in items}
    assert len(order["ben"]) == 8 and set(order["ben"]) == ids
    # ben's order is his hash order, not ann's (a labeller's order is theirs alone)
    assert order["ben"] == sorted(ids, key=lambda i: order_key("ben", i))
    assert order["ben"] != sorted(ids, key=lambda i: order_key("ann", i))
    assert [first["item_id"]] + order["ann"] == sorted(ids, key=lambda i: order_key("ann", i))
    assert s.undo("nobody") is None
    s.close()
    (tmp_path / "notes.txt").write_text("not a database, but long enough to have a header " * 20)
    with pytest.raises(AmbientError, match="notes.txt: not a labelling database"):
        Store(tmp_path / "notes.txt")
