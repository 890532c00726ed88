"""The labelling server over HTTP: a bounded load test (N clients x M submissions ->
exactly N x M rows), retries stored once, and every request validated."""

from __future__ import annotations

import json
import sqlite3
import threading

from label_fixtures import call, write_eval_dir

from ambient_rlhf.cli import main


def test_concurrent_clients_store_exactly_n_times_m(tmp_path, label_server):
    n_clients, m = 8, 25
    ev = write_eval_dir(tmp_path / "eval", m)
    db = tmp_path / "labels.sqlite"
    srv = label_server(db, [ev])
    base = srv.url.rstrip("/")
    errors: list[str] = []

    def client(c: int) -> None:
        who = f"user-{c}"
        for k in range(m):
            st, d = call(base, f"/api/next?labeller={who}")
            if st != 200 or d["item"] is None:
                errors.append(f"{who} next {k}: {st} {d}")
                return
            body = {"labeller": who, "item_id": d["item"]["item_id"], "choice": ("left", "right", "tie", "skip")[k % 4],
                    "note": "", "submission_id": f"sub-{c}-{k:04d}"}
            st, r = call(base, "/api/judge", body)
            if st != 200 or r["status"] != "stored":
                errors.append(f"{who} judge {k}: {st} {r}")
                return
    threads = [threading.Thread(target=client, args=(c,)) for c in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(*) FROM judgements").fetchone()[0] == n_clients * m
    per = con.execute("SELECT labeller, COUNT(*), COUNT(DISTINCT item_id) FROM judgements GROUP BY labeller").fetchall()
    assert sorted(per) == sorted((f"user-{c}", m, m) for c in range(n_clients))
    # every client is done
    st, d = call(base, "/api/next?labeller=user-0")
    assert st == 200 and d["item"] is None and d["progress"] == {"done": m, "total": m}

    # a retry of a stored submission stores nothing; a second judgement of the item is refused
    item = con.execute("SELECT item_id FROM judgements WHERE submission_id='sub-0-0000'").fetchone()[0]
    again = {"labeller": "user-0", "item_id": item, "choice": "left", "note": "", "submission_id": "sub-0-0000"}
    assert call(base, "/api/judge", again) == (200, {"status": "duplicate", "progress": {"done": m, "total": m}})
    st, r = call(base, "/api/judge", {**again, "submission_id": "sub-0-other"})
    assert st == 409 and "already judged" in r["error"]
    # the same submission id for another labeller's judgement is refused, not merged
    st, _ = call(base, "/api/judge", {**again, "labeller": "user-1"})
    assert st == 409
    assert con.execute("SELECT COUNT(*) FROM judgements").fetchone()[0] == n_clients * m


def test_every_request_is_validated(tmp_path, label_server):
    ev = write_eval_dir(tmp_path / "eval", 3)
    srv = label_server(tmp_path / "labels.sqlite", [ev])
    base = srv.url.rstrip("/")
    st, d = call(base, "/api/next?labeller=eve")
    assert st == 200
    good = {"labeller": "eve", "item_id": d["item"]["item_id"], "choice": "left", "note": "", "submission_id": "abcdef123456"}

    assert call(base, "/api/next?labeller=%3Cscript%3E")[0] == 400
    assert call(base, "/api/next")[0] == 400
    assert call(base, "/api/next?labeller=" + "x" * 41)[0] == 400
    assert call(base, "/api/next?labeller=eve%0A")[0] == 400  # a trailing newline is not a name
    assert call(base, "/api/judge", {**good, "item_id": good["item_id"] + "\n"})[0] == 400
    assert call(base, "/api/judge", good, content_type="text/plain")[0] == 415
    assert call(base, "/api/judge", raw=b"{not json")[0] == 400
    assert call(base, "/api/judge", [good])[0] == 400
    assert call(base, "/api/judge", {**good, "extra": 1})[0] == 400
    assert call(base, "/api/judge", {k: v for k, v in good.items() if k != "note"})[0] == 400
    assert call(base, "/api/judge", {**good, "choice": "both"})[0] == 400
    assert call(base, "/api/judge", {**good, "note": 5})[0] == 400
    assert call(base, "/api/judge", {**good, "note": "x" * 2001})[0] == 400
    assert call(base, "/api/judge", {**good, "item_id": "../../etc"})[0] == 400
    assert call(base, "/api/judge", {**good, "submission_id": "a b"})[0] == 400
    assert call(base, "/api/judge", raw=json.dumps({**good, "note": "x" * 20000}).encode())[0] == 413
    assert call(base, "/api/judge", {**good, "item_id": "0" * 20})[0] == 404
    assert call(base, "/api/judge", {**good, "labeller": "mallory"})[0] == 409  # never shown to mallory
    assert call(base, "/api/judge", good, headers={"Origin": "http://evil.example"})[0] == 403
    assert call(base, "/api/next?labeller=eve", headers={"Host": "evil.example"})[0] == 403
    assert call(base, "/static/..%2Fstore.py")[0] == 404
    # none of that stored anything; the well-formed one is stored
    assert call(base, "/api/judge", good, headers={"Origin": base})[0] == 200
    con = sqlite3.connect(tmp_path / "labels.sqlite")
    assert con.execute("SELECT COUNT(*) FROM judgements").fetchone()[0] == 1


def test_token_and_remote_bind(tmp_path, label_server, capsys):
    ev = write_eval_dir(tmp_path / "eval", 3)
    token = "s3cret-token-0123456789"
    srv = label_server(tmp_path / "labels.sqlite", [ev], extra=("--token", token))
    base = srv.url.rstrip("/")
    assert call(base, "/api/next?labeller=eve")[0] == 401
    assert call(base, "/api/next?labeller=eve", headers={"X-Label-Token": token[:-1] + "X"})[0] == 401
    assert call(base, "/api/next?labeller=eve", headers={"X-Label-Token": token})[0] == 200
    assert call(base, f"/api/next?labeller=eve&token={token}")[0] == 200
    assert call(base, "/api/undo", {"labeller": "eve"})[0] == 401
    # a non-loopback bind without --allow-remote is refused before anything is served
    code = main(["label", "--samples", str(ev), "--db", str(tmp_path / "other.sqlite"), "--host", "0.0.0.0"])
    assert code == 2 and "--allow-remote" in capsys.readouterr().err
    assert not (tmp_path / "other.sqlite").exists()
    code = main(["label", "--samples", str(ev), "--db", str(tmp_path / "o.sqlite"), "--token", "short"])
    assert code == 2 and "at least 16" in capsys.readouterr().err
    # a database without items and no --samples: nothing to serve, said so
    code = main(["label", "--db", str(tmp_path / "empty.sqlite")])
    assert code == 2 and "no items to label; pass --samples" in capsys.readouterr().err


def test_restart_without_samples_serves_the_database(tmp_path, label_server):
    ev = write_eval_dir(tmp_path / "eval", 4)
    db = tmp_path / "labels.sqlite"
    first = label_server(db, [ev])
    st, d = call(first.url.rstrip("/"), "/api/next?labeller=eve")
    first.kill()
    again = label_server(db, [])  # no --samples: the items are in the database
    assert call(again.url.rstrip("/"), "/api/next?labeller=eve") == (st, d)


def test_port_in_use_is_a_clear_error(tmp_path, label_server, capsys):
    srv = label_server(tmp_path / "labels.sqlite", [write_eval_dir(tmp_path / "eval", 2)])
    code = main(["label", "--db", str(tmp_path / "labels.sqlite"), "--port", str(srv.port)])
    assert code == 2 and "cannot listen there" in capsys.readouterr().err
