"""Reading a data directory's tables (the contract of :mod:`ambient_rlhf.data.schema`).

Shared by every stage that reads a data directory (reward models, their evaluation, the
policy evaluation), so it lives in ``data/``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ambient_rlhf import AmbientError
from ambient_rlhf.data import schema


def community_name(data_dir: str | Path) -> str:
    """The community of a data directory: its manifest's ``community``, else the most
    common value of the ``community`` column of responses.parquet, else the directory name."""
    p = Path(data_dir)
    m = p / "manifest.json"
    if m.is_file():
        try:
            c = json.loads(m.read_text()).get("community")
            if isinstance(c, str) and c:
                return c
        except json.JSONDecodeError:
            pass
    try:
        import pandas as pd

        col = pd.read_parquet(p / schema.RESPONSES_FILE, columns=["community"])["community"].dropna()
        if len(col):
            return str(col.mode().iloc[0])
    except Exception:  # no such file or column: fall back to the name
        pass
    return p.name


def read_table(data_dir: str | Path, name: str, columns: tuple[str, ...], split: str | None = None):
    """A parquet file of a data directory, checked against the contract, one split."""
    import pandas as pd

    path = Path(data_dir) / name
    if not path.is_file():
        raise AmbientError(f"{path}: missing; is {data_dir} a data directory (`ambient data build`)?")
    df = pd.read_parquet(path)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise AmbientError(f"{path}: missing columns {missing} (see ambient_rlhf.data.schema)")
    if split is not None:
        df = df[df["split"] == split].reset_index(drop=True)
    return df
