"""Records of the wrong type anywhere are counted bad records (file:line and field), and
the build goes on; before, ``"distinguished": true`` or ``"subreddit": 123`` raised an
AttributeError traceback from data/threads.py."""

import pytest

from ambient_rlhf import AmbientError
from ambient_rlhf.config import load_config
from ambient_rlhf.data.build import DataConfig, build

from data_fixtures import canonical_dump, com, sub, write_ndjson


def _cfg(*o):
    return load_config(DataConfig, None, ["max_bad_fraction=0.5", "splits.train=1", "splits.valid=0",
                                          "splits.test=0", *o])


@pytest.mark.parametrize("field,value", [("distinguished", True), ("subreddit", 123), ("stickied", "maybe"),
                                         ("author", ["x"]), ("score", 1.5), ("created_utc", "soon"),
                                         ("body", {"t": 1}), ("link_id", None)])
def test_odd_typed_comment_is_a_bad_record_naming_file_line_and_field(tmp_path, field, value):
    subs, coms = canonical_dump()
    d = tmp_path / "d"
    d.mkdir()
    write_ndjson(d / "AskTest_submissions.ndjson", subs)
    odd = com("odd", "s1", 5, 900, "zed")
    odd[field] = value
    write_ndjson(d / "AskTest_comments.ndjson", coms + [odd])
    m = build([str(d)], str(tmp_path / "out"), _cfg("filters.subreddit=AskTest"))
    b = m["bad_records"]
    line = len(coms) + 1
    name = "field"  # a null is a wrong type too: "expected text, got null"
    # the canonical dump holds one bad record already (a comment whose submission is absent)
    assert b["total"] == 2 and b["by_reason"] == {f"{name} '{field}'": 1, "submission absent": 1}
    assert any(e.startswith(f"{d / 'AskTest_comments.ndjson'}:{line}: {name} '{field}'") for e in b["examples"])
    assert m["counts"]["comments"]["read"] == len(coms)  # the odd one is not read


@pytest.mark.parametrize("field,value", [("distinguished", True), ("subreddit", 123), ("over_18", "perhaps"),
                                         ("title", 7), ("removed_by_category", 3)])
def test_odd_typed_submission_is_a_bad_record(tmp_path, field, value):
    subs, coms = canonical_dump()
    d = tmp_path / "d"
    d.mkdir()
    odd = sub("odd")
    odd[field] = value
    write_ndjson(d / "AskTest_submissions.ndjson", subs + [odd])
    write_ndjson(d / "AskTest_comments.ndjson", coms)
    m = build([str(d)], str(tmp_path / "out"), _cfg("filters.subreddit=AskTest"))
    b = m["bad_records"]
    assert b["total"] == 2 and b["by_reason"] == {f"field '{field}'": 1, "submission absent": 1}
    assert b["examples"][0].startswith(f"{d / 'AskTest_submissions.ndjson'}:{len(subs) + 1}: field '{field}'")


def test_numeric_strings_are_still_read(tmp_path):
    # old Pushshift dumps write numbers as strings: accepted, as before
    subs, coms = canonical_dump()
    coms = [dict(c, score=str(c["score"]), created_utc=str(c["created_utc"])) for c in coms]
    d = tmp_path / "d"
    d.mkdir()
    write_ndjson(d / "AskTest_submissions.ndjson", subs)
    write_ndjson(d / "AskTest_comments.ndjson", coms)
    m = build([str(d)], str(tmp_path / "out"), _cfg())
    assert m["bad_records"]["by_reason"] == {"submission absent": 1}
    assert m["counts"]["comments"]["read"] == len(coms)


def test_failed_build_does_not_point_to_a_manifest(tmp_path, capsys):
    # more bad records than shown, and too many: the build fails and writes no manifest,
    # so the warnings must not send the user to manifest.json (they did before)
    subs, coms = canonical_dump()
    d = tmp_path / "d"
    d.mkdir()
    write_ndjson(d / "AskTest_submissions.ndjson", subs)
    write_ndjson(d / "AskTest_comments.ndjson", coms, extra_lines=["{not json"] * 8)
    with pytest.raises(AmbientError, match="records are bad"):
        build([str(d)], str(tmp_path / "out"), load_config(DataConfig))
    err = capsys.readouterr().err
    assert "more bad records follow" in err and "manifest.json" not in err
    assert not (tmp_path / "out").exists()
