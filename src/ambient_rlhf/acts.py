"""``ambient data acts``: the data-stage acts (:mod:`ambient_rlhf.data.acts.build`) with the
optional dense re-ranker, which needs a model (:mod:`ambient_rlhf.models.embed`) and so is
wired here, above ``data/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ambient_rlhf.data.acts.build import build_acts
from ambient_rlhf.data.acts.config import ActsConfig


def run_acts(data_dir: str | Path, cfg: ActsConfig, overwrite: bool = False) -> dict[str, Any]:
    """Build acts.parquet / act_pairs.parquet in ``data_dir``; ``cfg.rerank`` adds the
    embedding cosine of each act's top lexical hits (``rerank_score``)."""
    rerank = None
    if cfg.rerank:
        from ambient_rlhf.models.embed import MeanPooledEmbedder

        rerank = MeanPooledEmbedder(cfg.rerank_model).reranker()
    return build_acts(data_dir, cfg, rerank=rerank, overwrite=overwrite)


def evaluate_labels(data_dir: str | Path | None, acts_file: str | Path, feedback_file: str | Path,
                    cfg: ActsConfig, k: int = 10) -> dict[str, Any]:
    """Precision of the acts (on the sample; on ``data_dir``'s acts.parquet when given) and
    of the feedback rules, against the hand-labelled files."""
    from ambient_rlhf.data.acts import evaluate as E

    acts_rows = E.read_jsonl(acts_file, ("comment_id", "depth", "parent", "comment", "acts"))
    out: dict[str, Any] = {"acts_sample": E.sample_precision(acts_rows, cfg.specs(), ks=(5, k), k1=cfg.k1, b=cfg.b)}
    if data_dir is not None:
        import pandas as pd

        p = Path(data_dir) / "acts.parquet"
        if not p.is_file():
            from ambient_rlhf import AmbientError

            raise AmbientError(f"{p}: missing; run `ambient data acts {data_dir}` first")
        import pyarrow.parquet as pq

        cols = [c for c in ("act", "act_score", "act_rank", "comment_id") if c in pq.read_schema(p).names]
        df = pd.read_parquet(p, columns=cols)  # act_rank is absent from files written before it existed
        names = [a.name for a in cfg.specs()]
        out["acts_corpus"] = E.corpus_precision(df, acts_rows, names, k)
        out["acts_threshold"] = E.threshold_precision(df, acts_rows, names)
    out["feedback"] = E.feedback_precision(E.read_jsonl(feedback_file, ("reply", "role", "label")))
    return out
