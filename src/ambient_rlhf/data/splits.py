"""Train/valid/test split by a hash of the thread id: deterministic, order-free, and no
thread (hence no prompt) can land in two splits."""

from __future__ import annotations

import hashlib

from ambient_rlhf.data.schema import SPLITS


def hash_unit(thread_id: str, salt: str = "") -> float:
    """A number in [0, 1) from the sha256 of ``salt + ":" + thread_id`` (first 8 bytes)."""
    h = hashlib.sha256(f"{salt}:{thread_id}".encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def half_of(thread_id: str) -> str:
    """``a`` or ``b``: parity of a salted hash.  Salted so the halves are independent of the
    data stage's hash split (an unsalted hash of the same id could correlate with it).
    ``ambient rm train_half=a|b`` trains on one half."""
    h = hashlib.sha256(("ambient-half:" + str(thread_id)).encode()).digest()
    return "a" if h[0] % 2 == 0 else "b"


def split_of(thread_id: str, fractions: tuple[float, float, float], salt: str = "") -> str:
    """``"train"`` when the hash is below ``fractions[0]``, ``"valid"`` below
    ``fractions[0] + fractions[1]``, else ``"test"``."""
    u = hash_unit(thread_id, salt)
    if u < fractions[0]:
        return SPLITS[0]
    if u < fractions[0] + fractions[1]:
        return SPLITS[1]
    return SPLITS[2]
