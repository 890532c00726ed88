"""Whole comment trees of a data directory's threads, read again from its Reddit dump.

``ambient data build`` keeps only top-level answers and the sentiment of their direct
replies; dialog acts happen at any depth, so this module streams the dump's comments once
more and keeps every comment of the threads the data directory kept.  Malformed trees are
counted, never fatal:

* ``missing_parent``: a comment whose parent is neither the submission nor a comment of the
  thread (deleted, or outside the dump); it and its subtree are unreachable and dropped;
* ``cycle``: comments whose parent chain loops (``a -> b -> a``, or a self-parent); dropped;
* ``duplicate_id``: a second comment with an id already seen (the first is kept);
* ``deleted_author`` / ``deleted_text``: kept in the tree (their replies still count), but a
  deleted author is never the asker or the answer's author, and a deleted text is no act.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from ambient_rlhf.data.records import Comment, RecordError, finite, record_id
from ambient_rlhf.data.sources import BadRecords, StreamDamage, iter_records
from ambient_rlhf.data.records import DELETED_AUTHOR, DELETED_TEXT, Counts, strip_prefix


@dataclass
class Node:
    """One comment of a tree."""

    id: str
    parent: str  # parent comment id, or "" for a top-level comment
    author: str | None  # None when deleted
    text: str
    score: int
    created_utc: float
    depth: int = 0  # 0 = top-level
    children: list["Node"] = field(default_factory=list)

    @property
    def deleted(self) -> bool:
        return self.text.strip() in DELETED_TEXT


@dataclass
class Tree:
    """A thread: the prompt, its author, and its top-level comments with their replies."""

    thread_id: str
    prompt: str
    asker: str | None  # None when deleted
    created_utc: float
    roots: list[Node] = field(default_factory=list)
    by_id: dict[str, Node] = field(default_factory=dict)

    def walk(self) -> Iterator[Node]:
        """Every reachable comment, depth first, siblings in time order."""
        stack = list(reversed(self.roots))
        while stack:
            n = stack.pop()
            yield n
            stack.extend(reversed(n.children))


def author_or_none(author: str | None) -> str | None:
    a = (author or "").strip()
    return None if a in DELETED_AUTHOR else a


def assemble(thread_id: str, prompt: str, asker: str | None, created_utc: float,
             comments: Iterable[Node], counts: Counts) -> Tree:
    """Link ``comments`` (parent ids already stripped of ``t1_``; "" = top-level) into a
    tree; count and drop what cannot be reached from the submission (``trees`` group)."""
    tree = Tree(thread_id, prompt, author_or_none(asker), created_utc)
    nodes: dict[str, Node] = {}
    for n in comments:
        if n.id in nodes:
            counts.inc("trees", "duplicate_id")
            continue
        nodes[n.id] = n
    for n in nodes.values():
        n.children = []
    for n in sorted(nodes.values(), key=lambda x: (x.created_utc, x.id)):
        if n.parent == "":
            tree.roots.append(n)
        elif n.parent in nodes and n.parent != n.id:
            nodes[n.parent].children.append(n)
    # depth from the roots; what is not reached hangs off a missing parent or a cycle
    for r in tree.roots:
        r.depth = 0
    for n in tree.walk():
        tree.by_id[n.id] = n
        for c in n.children:
            c.depth = n.depth + 1
    for n in nodes.values():
        if n.id in tree.by_id:
            continue
        seen, cur = set(), n
        while cur.parent and cur.parent in nodes and cur.id not in seen:
            seen.add(cur.id)
            cur = nodes[cur.parent]
        counts.inc("trees", "cycle" if cur.id in seen or cur.parent == cur.id else "missing_parent")
    for n in tree.by_id.values():
        if n.author is None:
            counts.inc("trees", "deleted_author")
        if n.deleted:
            counts.inc("trees", "deleted_text")
    counts.inc("trees", "comments_in_trees", len(tree.by_id))
    return tree


@dataclass
class ThreadMeta:
    """What the tree needs of a kept submission."""

    prompt: str
    asker: str | None
    created_utc: float


def read_trees(comments_path: Path, threads: dict[str, ThreadMeta], counts: Counts,
               bad: BadRecords, keep_damaged: bool = False) -> Iterator[Tree]:
    """Every thread of ``threads`` (id -> meta) with all its comments from the dump file.

    Holds the comments of the kept threads in memory until the end of the file (the
    AskAcademia dump: ~70k comments, ~60 MB); threads come out in id order."""
    held: dict[str, list[Node]] = {t: [] for t in threads}
    for line, o in iter_records(comments_path, bad, Comment, desc="comments (acts)", keep_damaged=keep_damaged):
        if type(o) is StreamDamage:
            counts.inc("trees", "damaged_stream")
            continue
        try:
            cid = record_id(o)
            created = finite(o.created_utc, "created_utc")
        except RecordError as e:
            bad.add(comments_path, line, str(e), kind=e.kind)
            continue
        tid = strip_prefix(o.link_id)
        if tid not in held:
            counts.inc("trees", "other_thread")
            continue
        # top-level: the parent is the submission (``parent_id == link_id``)
        parent = "" if o.parent_id == o.link_id or o.parent_id.startswith("t3_") else strip_prefix(o.parent_id)
        held[tid].append(Node(cid, parent, author_or_none(o.author), o.body, o.score, created))
    for tid in sorted(held):
        m = threads[tid]
        yield assemble(tid, m.prompt, m.asker, m.created_utc, held.pop(tid), counts)
