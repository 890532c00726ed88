"""Batches of training units: grouped by length and thread, a pure function of (seed,
epoch) so a resumed run sees the same ones, and cut into shares for several processes."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ambient_rlhf.models.reward_inputs import TextTable
from ambient_rlhf.train.reward.units import Unit


def epoch_batches(units: list[Unit], lengths: list[int], batch_size: int, seed: int, epoch: int,
                  grouped: bool) -> list[list[Unit]]:
    """The batches of one epoch, a pure function of (seed, epoch) so a resumed run sees
    the same ones.  Grouped: shuffle threads, sort threads by length inside windows of
    ~64 batches, cut into batches, shuffle the batches."""
    rng = np.random.RandomState((seed * 1_000_003 + epoch) % (2**32))
    if not grouped:
        order = rng.permutation(len(units))
        flat = [units[i] for i in order]
        return [flat[i:i + batch_size] for i in range(0, len(flat), batch_size)]
    by: dict[str, list[Unit]] = defaultdict(list)
    for u in units:
        by[u.thread].append(u)
    threads = list(by)
    threads = [threads[i] for i in rng.permutation(len(threads))]
    per_thread = max(len(units) / max(len(threads), 1), 1.0)
    window = max(1, int(64 * batch_size / per_thread))
    tlen = {t: max(lengths[r] for u in by[t] for r in u.rows) for t in threads}
    ordered: list[str] = []
    for i in range(0, len(threads), window):
        ordered.extend(sorted(threads[i:i + window], key=lambda t: tlen[t]))
    flat = [u for t in ordered for u in by[t]]
    batches = [flat[i:i + batch_size] for i in range(0, len(flat), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def split_units(units: list[Unit], world: int) -> list[list[Unit]]:
    """Cut one global batch into ``world`` contiguous shares of whole units (a pair, a
    ranked thread, a response is never split) with about the same number of sequences:
    a unit goes to the share in which the middle of its sequences falls.  Contiguous, so
    a thread's units mostly stay together (its prompt is run once).  A share can be empty
    (a batch of fewer units than processes)."""
    if world == 1:
        return [list(units)]
    sizes = np.cumsum([len(u.rows) for u in units])
    total = float(sizes[-1]) if len(units) else 1.0
    shares: list[list[Unit]] = [[] for _ in range(world)]
    for u, end in zip(units, sizes):
        mid = float(end) - len(u.rows) / 2
        shares[min(int(mid * world / total), world - 1)].append(u)
    return shares


def loss_share(objective: str, share: list[Unit], units: list[Unit]) -> float:
    """The weight of a share's loss in the loss of its whole batch.

    Every objective's batch loss is a mean over units -- pairs, responses, or for
    ``ranking`` the threads with at least one pair (ties give none; each thread's pairs
    are already weighted 1/P_g inside :func:`~ambient_rlhf.rl.reward_losses.ranking_loss`,
    and a thread is never split) -- so ``loss(batch) = sum over shares of
    n(share) / n(batch) * loss(share)``."""
    if objective == "ranking":
        def live(us: list[Unit]) -> int:
            return sum(1 for u in us if len(set(u.target)) > 1)
        return live(share) / max(live(units), 1)
    return len(share) / max(len(units), 1)


def rank_share(units: list[Unit], world: int, rank: int) -> tuple[list[Unit], list[int]]:
    """This process's units of a global batch and the distinct rows it scores.  An empty
    share scores the batch's first row with weight 0: DDP needs a backward pass from every
    process."""
    mine = split_units(units, world)[rank]
    rows = sorted({r for u in mine for r in u.rows}) or [units[0].rows[0]]
    return mine, rows


def shard_rows(table: "TextTable", rows: list[int], rank: int, world: int) -> list[int]:
    """This process's share of the texts of an evaluation: distinct rows by length, every
    ``world``-th one (so every process gets short and long texts)."""
    ordered = sorted(set(rows), key=lambda r: len(table.ids[r]))
    return ordered[rank::world]
