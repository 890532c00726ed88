"""Readers on fixtures written here: bad lines, truncated .zst, detection, errors."""

import json

import pytest
import zstandard

from ambient_rlhf import AmbientError
from ambient_rlhf.data.sources import BadRecords, discover, iter_json_objects, iter_lines, iter_table_rows

from data_fixtures import canonical_dump, write_ndjson


def _lines(n):
    # random text compresses poorly, so a truncated stream still holds whole blocks
    import random

    rng = random.Random(0)
    return [json.dumps({"i": i, "text": "%032x" % rng.getrandbits(128)}) for i in range(n)]


def test_plain_and_multiframe_zst_read_the_same(tmp_path):
    data = ("\n".join(_lines(3000)) + "\n").encode()
    (tmp_path / "a.ndjson").write_bytes(data)
    c = zstandard.ZstdCompressor(level=3)
    half = len(data) // 2
    (tmp_path / "a2.ndjson.zst").write_bytes(c.compress(data[:half]) + c.compress(data[half:]))
    # a --long=31 style frame (2 GiB window) must decompress too
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=31, enable_ldm=True)
    (tmp_path / "a3.ndjson.zst").write_bytes(zstandard.ZstdCompressor(compression_params=params).compress(data))
    ref = list(iter_lines(tmp_path / "a.ndjson"))
    assert len(ref) == 3000 and ref[-1][0] == 3000
    for name in ("a2.ndjson.zst", "a3.ndjson.zst"):
        bad = BadRecords()
        got = list(iter_lines(tmp_path / name, bad))
        assert [(n, r.strip()) for n, r in got] == [(n, r.strip()) for n, r in ref] and bad.total == 0


def test_bad_json_lines_are_reported_with_file_and_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n{"a": \n\n[1, 2]\n{"a": 3}\n')
    bad = BadRecords(show=1)
    got = list(iter_json_objects(p, bad))
    assert [(n, o["a"]) for n, o in got] == [(1, 1), (5, 3)]
    assert bad.total == 2 and bad.seen == 4  # the blank line 3 is not a record
    assert len(bad.examples) == 1 and bad.examples[0].startswith(f"{p}:2: malformed JSON (Expecting value")
    assert bad.by_reason == {"malformed JSON": 1, "not an object": 1}


def test_csv_rows_carry_their_start_line(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text('a,b\n1,"two\nlines"\n3,4\n5\n')
    bad = BadRecords()
    rows = list(iter_table_rows(p, bad))
    assert rows == [(2, {"a": "1", "b": "two\nlines"}), (4, {"a": "3", "b": "4"})]
    assert bad.total == 1 and "t.csv:5: expected 2 fields, got 1" in bad.examples[0]


def test_discover_directory_and_files(tmp_path, dump_dir):
    inputs = discover([str(dump_dir)])
    assert len(inputs) == 1 and inputs[0].kind == "reddit"
    assert inputs[0].submissions.name == "AskTest_submissions.ndjson"
    # content sniffing when names say nothing
    subs, coms = canonical_dump()
    write_ndjson(tmp_path / "s.jsonl", subs)
    write_ndjson(tmp_path / "c_x.jsonl", coms)
    (tmp_path / "table.csv").write_text("prompt_id,prompt\n1,hi\n")
    kinds = {i.kind for i in discover([str(tmp_path / "table.csv")])}
    assert kinds == {"table"}
    with pytest.raises(AmbientError, match="comments file without its submissions"):
        discover([str(dump_dir / "AskTest_comments.ndjson")])


def test_one_line_errors_for_missing_empty_unknown(tmp_path):
    with pytest.raises(AmbientError, match=r"nope\.csv: no such file or directory"):
        discover([str(tmp_path / "nope.csv")])
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(AmbientError, match=r"empty\.csv: file is empty"):
        discover([str(tmp_path / "empty.csv")])
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02 not json at all")
    with pytest.raises(AmbientError, match=r"blob\.bin: cannot tell the format.*--format"):
        discover([str(tmp_path / "blob.bin")])


def test_input_without_records_is_a_one_line_error(tmp_path):
    from ambient_rlhf.config import load_config
    from ambient_rlhf.data.build import DataConfig, build

    d = tmp_path / "d"
    d.mkdir()
    (d / "E_submissions.ndjson.zst").write_bytes(zstandard.ZstdCompressor().compress(b"\n\n"))
    write_ndjson(d / "E_comments.ndjson", canonical_dump()[1])
    with pytest.raises(AmbientError, match=r"E_submissions.ndjson.zst: no records"):
        build([str(d)], str(tmp_path / "o"), load_config(DataConfig))
    (tmp_path / "h.csv").write_text("prompt_id,prompt,prompt_score,prompt_created_utc,response_id,response,"
                                    "response_score,response_created_utc\n")
    with pytest.raises(AmbientError, match=r"h.csv: no records"):
        build([str(tmp_path / "h.csv")], str(tmp_path / "o"), load_config(DataConfig))
    assert not (tmp_path / "o").exists()
