"""Damaged ``.zst`` input: an error by default; with ``source.keep_damaged`` every line
that can be decoded is kept, the lost bytes and the threads the gap touched are counted."""

import json
import random
import shutil

import pandas as pd
import pytest
import zstandard

from ambient_rlhf import AmbientError
from ambient_rlhf.config import load_config
from ambient_rlhf.data.build import DataConfig, build
from ambient_rlhf.data.sources import BadRecords, StreamDamage, iter_json_objects, iter_lines


def _lines(n):
    rng = random.Random(0)  # random text compresses poorly: many blocks per frame
    return [json.dumps({"i": i, "text": "%032x" % rng.getrandbits(128)}) for i in range(n)]


def _frames(parts, checksum=False):
    c = zstandard.ZstdCompressor(level=3, write_checksum=checksum)
    return [c.compress(("\n".join(p) + "\n").encode()) for p in parts]


def _ids(got):
    out, garbled = [], 0
    for _, raw in got:
        if isinstance(raw, StreamDamage):
            continue
        try:
            out.append(json.loads(raw)["i"])
        except ValueError:
            garbled += 1
    return out, garbled


def test_truncated_zst_is_an_error_naming_file_and_offset(tmp_path):
    z = b"".join(_frames([_lines(20000)]))
    p = tmp_path / "t.ndjson.zst"
    p.write_bytes(z[: len(z) // 2])
    with pytest.raises(AmbientError, match=rf"{p}: truncated zstd stream: the file ends at byte {len(z) // 2}, "
                                           r"inside the frame that starts at byte 0; pass --keep-damaged"):
        list(iter_lines(p, BadRecords()))


def test_truncated_zst_kept_on_request_keeps_every_complete_line(tmp_path):
    z = b"".join(_frames([_lines(20000)]))
    p = tmp_path / "t.ndjson.zst"
    p.write_bytes(z[: len(z) // 2])
    bad = BadRecords()
    got = list(iter_json_objects(p, bad, keep_damaged=True))
    *objs, (line, damage) = got
    assert 0 < len(objs) < 20000 and [o["i"] for _, o in objs] == list(range(len(objs)))  # in order, no hole
    assert isinstance(damage, StreamDamage) and damage.kind == "truncated" and damage.offset == len(z) // 2
    assert line == len(objs) + 1 and damage.partial_bytes > 0  # the cut line is dropped and its bytes counted
    assert bad.total == 0 and bad.as_dict()["damaged_streams"][0]["file"] == str(p)


def test_corrupt_frame_keeps_every_decodable_line(tmp_path):
    # three small frames, all in the first 1 MiB read; the middle one is damaged.  Before,
    # the lines of frame 1 (decoded from the same chunk) were dropped and frame 3 never read.
    lines = _lines(9000)
    f1, f2, f3 = _frames([lines[:1000], lines[1000:8000], lines[8000:]])  # frame 2: 3+ blocks of 128 KiB
    assert len(f1) + len(f2) + len(f3) < (1 << 20)
    blob = bytearray(f1 + f2 + f3)
    at = len(f1) + len(f2) - 40  # inside frame 2's last block
    blob[at:at + 30] = b"\x00" * 30
    p = tmp_path / "c.ndjson.zst"
    p.write_bytes(bytes(blob))
    with pytest.raises(AmbientError, match=rf"{p}: corrupt zstd data at byte \d+\.\.\d+ \(in the frame that starts at byte "
                                           rf"{len(f1)}"):
        list(iter_lines(p))
    bad = BadRecords()
    got = list(iter_lines(p, bad, keep_damaged=True))
    ids, garbled = _ids(got)
    damages = [r for _, r in got if isinstance(r, StreamDamage)]
    assert len(damages) == 1 and damages[0].kind == "corrupt" and damages[0].resumed_at == len(f1) + len(f2)
    assert ids[:1000] == list(range(1000))  # frame 1 whole
    assert ids[-1000:] == list(range(8000, 9000))  # frame 3 whole (it starts a line: kept)
    mid = [i for i in ids if 1000 <= i < 8000]
    assert 2000 < len(mid) < 7000 and mid == list(range(1000, 1000 + len(mid)))  # frame 2 up to its damaged block
    assert garbled <= 2


def test_checksum_failure_keeps_the_frame_up_to_its_last_block(tmp_path):
    # data changed inside a frame with a checksum decodes (to some garbled lines) and fails
    # only at the frame's end: every block's lines are still passed on.
    lines = _lines(30000)
    f1, f2, f3 = _frames([lines[:5000], lines[5000:20000], lines[20000:]], checksum=True)
    blob = bytearray(f1 + f2 + f3)
    at = len(f1) + len(f2) // 2
    blob[at:at + 64] = b"\xff" * 64  # here it decodes to garbage and only the checksum fails
    p = tmp_path / "k.ndjson.zst"
    p.write_bytes(bytes(blob))
    got = list(iter_lines(p, BadRecords(), keep_damaged=True))
    (damage,) = [r for _, r in got if isinstance(r, StreamDamage)]
    assert "checksum" in damage.error
    ids, garbled = _ids(got)
    assert len(ids) + garbled == 30000 and garbled <= 2  # the damage garbles lines but loses none
    assert ids[-10000:] == list(range(20000, 30000))


@pytest.fixture(scope="module")
def askacademia_halves(shared_data, tmp_path_factory):
    """The real AskAcademia dump, its comments file cut to half its bytes (in tmp)."""
    src = shared_data / "reddit-askacademia"
    d = tmp_path_factory.mktemp("cut") / "aa"
    d.mkdir()
    shutil.copy(src / "AskAcademia_submissions.ndjson.zst", d)
    z = (src / "AskAcademia_comments.ndjson.zst").read_bytes()
    (d / "AskAcademia_comments.ndjson.zst").write_bytes(z[: len(z) // 2])
    return src, d, len(z) // 2


def test_truncated_real_dump_fails_by_default(askacademia_halves, tmp_path):
    _, d, cut = askacademia_halves
    out = tmp_path / "out"
    with pytest.raises(AmbientError, match=rf"AskAcademia_comments.ndjson.zst: truncated zstd stream: the file ends "
                                           rf"at byte {cut}"):
        build([str(d)], str(out), load_config(DataConfig, overrides=["labels.reply_sentiment=false"]))
    assert not out.exists()


def test_truncated_real_dump_kept_drops_the_threads_the_cut_touched(askacademia_halves, tmp_path):
    src, d, cut = askacademia_halves
    cfg = ["labels.reply_sentiment=false"]
    full = build([str(src)], str(tmp_path / "full"), load_config(DataConfig, overrides=cfg))
    m = build([str(d)], str(tmp_path / "half"), load_config(DataConfig, overrides=cfg + ["source.keep_damaged=true"]))
    dmg = m["counts"]["damage"]
    assert dmg["threads_dropped"] > 0 and dmg["responses_dropped"] > 0
    (stream,) = m["bad_records"]["damaged_streams"]
    assert stream["kind"] == "truncated" and stream["offset"] == cut and m["bad_records"]["total"] == 0
    assert 0 < m["counts"]["comments"]["read"] < full["counts"]["comments"]["read"]
    # every thread written has exactly the answers it has in the full dump: none was cut
    cols = ["thread_id", "response_id"]
    a = pd.read_parquet(tmp_path / "half" / "responses.parquet", columns=cols)
    b = pd.read_parquet(tmp_path / "full" / "responses.parquet", columns=cols)
    b = b[b.thread_id.isin(set(a.thread_id))]
    assert len(a) > 0 and a.groupby("thread_id").response_id.apply(frozenset).to_dict() == \
        b.groupby("thread_id").response_id.apply(frozenset).to_dict()


def test_truncated_jsonl_table_drops_the_prompt_cut(tmp_path):
    # 2000 prompts x 3 answers (several zstd blocks), rows adjacent per prompt; cut inside some prompt
    rng = random.Random(1)
    rows = [{"prompt_id": f"p{i}", "prompt": f"question {i}?", "prompt_score": 20, "prompt_created_utc": 1000,
             "response_id": f"p{i}r{j}", "response": "%032x" % rng.getrandbits(128), "response_score": 2 + j,
             "response_created_utc": 1000 + 60 * j} for i in range(2000) for j in range(3)]
    z = b"".join(_frames([[json.dumps(r) for r in rows]]))
    p = tmp_path / "t.jsonl.zst"
    p.write_bytes(z[: len(z) * 2 // 3])
    with pytest.raises(AmbientError, match="t.jsonl.zst: truncated zstd stream"):
        build([str(p)], str(tmp_path / "o1"), load_config(DataConfig, overrides=["filters.allow_missing_retrieved_on=true"]))
    m = build([str(p)], str(tmp_path / "o2"), load_config(DataConfig, overrides=[
        "filters.allow_missing_retrieved_on=true", "labels.reply_sentiment=false", "source.keep_damaged=true"]))
    read = m["counts"]["table_rows"]["read"]
    cut_rows = read % 3 or 3  # the rows read of the prompt open at the cut
    assert m["counts"]["damage"] == {"threads_dropped": 1, "responses_dropped": cut_rows}
    r = pd.read_parquet(tmp_path / "o2" / "responses.parquet", columns=["thread_id"])
    assert (r.thread_id.value_counts() == 3).all() and r.thread_id.nunique() == (read - cut_rows) // 3


def test_truncated_csv_zst_is_an_error_even_when_kept(tmp_path):
    # it was read silently up to the cut before (the stream reader stops without a word)
    from ambient_rlhf.data.sources import iter_table_rows

    rng = random.Random(2)
    text = "a,b\n" + "".join(f"{i},{rng.getrandbits(128):032x}\n" for i in range(20000))
    z = zstandard.ZstdCompressor(level=3).compress(text.encode())
    p = tmp_path / "t.csv.zst"
    p.write_bytes(z[: len(z) // 2])
    for keep in (False, True):
        with pytest.raises(AmbientError, match=rf"{p}: truncated zstd stream"):
            list(iter_table_rows(p, BadRecords(), keep_damaged=keep))
