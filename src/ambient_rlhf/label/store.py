"""The labelling database: SQLite in WAL mode, one row per judgement.

Tables:

* ``items``: the comparisons (:class:`~ambient_rlhf.label.items.Item`), added once
  (same content = same id, so restarting the server on the same sources adds nothing);
* ``shown``: per (item, labeller) which answer was put on the left (``a`` or ``b``, drawn
  at random the first time the item is shown to that labeller, then fixed, so a reload or
  a restart shows the same page);
* ``judgements``: one row per judgement: who, which item, what was on the left, the
  choice as pressed (``left``/``right``/``tie``/``skip``) and as resolved to the item's
  answers (``a``/``b``/``tie``/``skip``), an optional note, when the item was shown and
  when it was judged.  ``undo`` marks the labeller's newest live judgement ``undone_at``
  (the row stays: the history is kept); at most one live judgement per (item, labeller)
  (a partial unique index) and one row per ``submission_id`` (a client's retry of the
  same submission stores nothing new), so every judgement is stored exactly once.

Every write is one ``BEGIN IMMEDIATE`` transaction; the connection waits up to 10 s for
another writer (several servers or an export may share the file).
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import time
from pathlib import Path

from ambient_rlhf import AmbientError
from ambient_rlhf.label.items import Item

CHOICES = ("left", "right", "tie", "skip")

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT PRIMARY KEY, kind TEXT NOT NULL, thread_id TEXT NOT NULL, prompt TEXT NOT NULL,
    a TEXT NOT NULL, b TEXT NOT NULL, source TEXT NOT NULL, community TEXT NOT NULL, added_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS shown (
    item_id TEXT NOT NULL REFERENCES items(item_id), labeller TEXT NOT NULL,
    left_side TEXT NOT NULL CHECK (left_side IN ('a', 'b')), shown_at REAL NOT NULL,
    PRIMARY KEY (item_id, labeller));
CREATE TABLE IF NOT EXISTS judgements (
    id INTEGER PRIMARY KEY AUTOINCREMENT, submission_id TEXT NOT NULL UNIQUE,
    item_id TEXT NOT NULL REFERENCES items(item_id), labeller TEXT NOT NULL,
    left_side TEXT NOT NULL CHECK (left_side IN ('a', 'b')),
    choice TEXT NOT NULL CHECK (choice IN ('left', 'right', 'tie', 'skip')),
    winner TEXT NOT NULL CHECK (winner IN ('a', 'b', 'tie', 'skip')),
    note TEXT NOT NULL DEFAULT '', shown_at REAL NOT NULL, judged_at REAL NOT NULL, undone_at REAL);
CREATE UNIQUE INDEX IF NOT EXISTS one_live_judgement ON judgements (item_id, labeller) WHERE undone_at IS NULL;
"""


class Conflict(Exception):
    """A request that contradicts what is stored (HTTP 409)."""


def resolve(choice: str, left_side: str) -> str:
    """The answer a pressed choice picks: ``left`` with ``a`` on the left is ``a``."""
    if choice in ("tie", "skip"):
        return choice
    right_side = "b" if left_side == "a" else "a"
    return left_side if choice == "left" else right_side


def order_key(labeller: str, item_id: str) -> str:
    """Each labeller sees the items in an order of their own (a hash), the same after a restart."""
    return hashlib.sha256(f"{labeller}\0{item_id}".encode()).hexdigest()


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.db = sqlite3.connect(str(self.path), timeout=10.0, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        try:
            mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise AmbientError(f"{self.path}: SQLite refused WAL mode (got {mode}); put the database "
                                   f"on a local disk")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            self.db.close()
            raise AmbientError(f"{self.path}: not a labelling database ({e}); give another --db") from None

    def close(self) -> None:
        self.db.close()

    def _tx(self):
        """``with self._tx() as db:`` one write transaction."""
        store = self

        class _T:
            def __enter__(self_):
                store._lock.acquire()
                store.db.execute("BEGIN IMMEDIATE")
                return store.db

            def __exit__(self_, et, ev, tb):
                try:
                    store.db.execute("COMMIT" if et is None else "ROLLBACK")
                finally:
                    store._lock.release()
                return False
        return _T()

    # ---- items ----------------------------------------------------------------------------
    def add_items(self, items: list[Item]) -> int:
        """Insert the items not yet stored; returns how many were new."""
        now = time.time()
        with self._tx() as db:
            before = db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            db.executemany("INSERT OR IGNORE INTO items VALUES (?,?,?,?,?,?,?,?,?)",
                           [(i.item_id, i.kind, i.thread_id, i.prompt, i.a, i.b, i.source, i.community, now)
                            for i in items])
            return db.execute("SELECT COUNT(*) FROM items").fetchone()[0] - before

    def n_items(self) -> int:
        with self._lock:
            return self.db.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    # ---- labelling ------------------------------------------------------------------------
    def progress(self, labeller: str) -> dict:
        with self._lock:
            done = self.db.execute("SELECT COUNT(*) FROM judgements WHERE labeller=? AND undone_at IS NULL",
                                   (labeller,)).fetchone()[0]
            total = self.db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        return {"done": done, "total": total}

    def next_item(self, labeller: str) -> dict | None:
        """The labeller's next item (the first in their order without a live judgement),
        its sides as shown (drawn at random and recorded the first time), or None when all
        are judged."""
        with self._tx() as db:
            todo = [r[0] for r in db.execute(
                "SELECT item_id FROM items WHERE item_id NOT IN "
                "(SELECT item_id FROM judgements WHERE labeller=? AND undone_at IS NULL)", (labeller,))]
            if not todo:
                return None
            iid = min(todo, key=lambda i: order_key(labeller, i))
            row = db.execute("SELECT left_side, shown_at FROM shown WHERE item_id=? AND labeller=?",
                             (iid, labeller)).fetchone()
            if row is None:
                left = secrets.choice(("a", "b"))
                db.execute("INSERT INTO shown VALUES (?,?,?,?)", (iid, labeller, left, time.time()))
            else:
                left = row["left_side"]
            it = db.execute("SELECT prompt, a, b FROM items WHERE item_id=?", (iid,)).fetchone()
        return {"item_id": iid, "prompt": it["prompt"],
                "left": it[left], "right": it["b" if left == "a" else "a"]}

    def judge(self, labeller: str, item_id: str, choice: str, note: str, submission_id: str) -> str:
        """Store one judgement; ``stored``, or ``duplicate`` when this ``submission_id`` is
        already stored (a retry).  :class:`Conflict` when the item was never shown to the
        labeller or already has their live judgement; KeyError for an unknown item."""
        if choice not in CHOICES:
            raise ValueError(f"choice {choice!r} not one of {CHOICES}")
        with self._tx() as db:
            prev = db.execute("SELECT item_id, labeller FROM judgements WHERE submission_id=?",
                              (submission_id,)).fetchone()
            if prev is not None:
                if (prev["item_id"], prev["labeller"]) != (item_id, labeller):
                    raise Conflict("submission_id already used for another item or labeller")
                return "duplicate"
            if db.execute("SELECT 1 FROM items WHERE item_id=?", (item_id,)).fetchone() is None:
                raise KeyError(item_id)
            shown = db.execute("SELECT left_side, shown_at FROM shown WHERE item_id=? AND labeller=?",
                               (item_id, labeller)).fetchone()
            if shown is None:
                raise Conflict("this item was not shown to this labeller")
            if db.execute("SELECT 1 FROM judgements WHERE item_id=? AND labeller=? AND undone_at IS NULL",
                          (item_id, labeller)).fetchone():
                raise Conflict("this labeller has already judged this item (undo it first)")
            db.execute("INSERT INTO judgements (submission_id, item_id, labeller, left_side, choice, winner, note,"
                       " shown_at, judged_at) VALUES (?,?,?,?,?,?,?,?,?)",
                       (submission_id, item_id, labeller, shown["left_side"], choice,
                        resolve(choice, shown["left_side"]), note, shown["shown_at"], time.time()))
        return "stored"

    def undo(self, labeller: str) -> str | None:
        """Mark the labeller's newest live judgement undone; its item id, or None."""
        with self._tx() as db:
            row = db.execute("SELECT id, item_id FROM judgements WHERE labeller=? AND undone_at IS NULL "
                             "ORDER BY id DESC LIMIT 1", (labeller,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE judgements SET undone_at=? WHERE id=?", (time.time(), row["id"]))
            return row["item_id"]

    # ---- reading everything (export) ------------------------------------------------------
    def live_judgements(self) -> list[dict]:
        """Every live judgement joined with its item, oldest first."""
        with self._lock:
            rows = self.db.execute(
                "SELECT j.*, i.kind, i.thread_id, i.prompt, i.a, i.b, i.community, i.source FROM judgements j "
                "JOIN items i USING (item_id) WHERE j.undone_at IS NULL ORDER BY j.id").fetchall()
        return [dict(r) for r in rows]

    def counts(self) -> dict:
        with self._lock:
            q = self.db.execute
            return {"items": q("SELECT COUNT(*) FROM items").fetchone()[0],
                    "judgement_rows": q("SELECT COUNT(*) FROM judgements").fetchone()[0],
                    "undone": q("SELECT COUNT(*) FROM judgements WHERE undone_at IS NOT NULL").fetchone()[0],
                    "labellers": q("SELECT COUNT(DISTINCT labeller) FROM judgements").fetchone()[0]}
