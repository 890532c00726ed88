"""Fixtures for the data-stage tests (helpers live in data_fixtures.py)."""

from __future__ import annotations

import json

import pytest

from data_fixtures import canonical_dump, com, write_ndjson


@pytest.fixture
def dump_dir(tmp_path):
    """Write the canonical dump (plus 3 malformed comment lines) and return its directory."""
    subs, coms = canonical_dump()
    d = tmp_path / "dump"
    d.mkdir()
    write_ndjson(d / "AskTest_submissions.ndjson", subs)
    bad = ['{"id": "b1", not json', json.dumps(com("b2", "s1", "many", 900, "m")),
           json.dumps({k: v for k, v in com("b3", "s1", 3, 900, "n").items() if k != "body"})]
    write_ndjson(d / "AskTest_comments.ndjson", coms, extra_lines=bad)
    return d


@pytest.fixture
def real_plots():
    """Request this fixture to draw the report's PNGs (the others skip matplotlib: ~1 s each)."""
    return True


@pytest.fixture(autouse=True)
def _skip_plots(request, monkeypatch):
    if "real_plots" in request.fixturenames:
        return
    import ambient_rlhf.data.report as report

    monkeypatch.setattr(report, "write_plots", lambda out: [])
