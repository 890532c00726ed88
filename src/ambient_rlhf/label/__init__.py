"""``ambient label``: explicit side-by-side comparisons, collected on a local web page.

* :mod:`~ambient_rlhf.label.items` -- the comparisons to show, read from ``ambient eval``
  output (policy vs reference samples) and from data directories (upvote pairs);
* :mod:`~ambient_rlhf.label.store` -- the SQLite database (WAL mode): items, the order
  each labeller was shown, one row per judgement;
* :mod:`~ambient_rlhf.label.server` -- the web application (Starlette, served by uvicorn)
  and its access rules;
* :mod:`~ambient_rlhf.label.export` -- judgements -> a data directory whose
  ``pairs.parquet`` ``ambient rm`` trains on, with the agreement between labellers and
  with the upvotes.
"""
