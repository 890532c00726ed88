"""Fixtures of the labelling tests (helpers live in label_fixtures.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from label_fixtures import Server, free_port


@pytest.fixture
def label_server():
    pytest.importorskip("uvicorn", reason="pip install -e '.[label]'")
    started: list[Server] = []

    def make(db: Path, sources: list[Path], extra: tuple[str, ...] = ()) -> Server:
        s = Server(db, sources, free_port(), extra)
        started.append(s)
        return s.start()
    yield make
    for s in started:
        s.kill()
