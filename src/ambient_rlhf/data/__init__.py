"""The data stage: readers, filters, labels, pairs and splits (``ambient data build``).

Pure Python + numpy/pyarrow: nothing here imports transformers, torch or a project
module above ``data/``.
"""
