"""The reward-feature cache on disk: a safetensors file written one tensor at a time,
memory-mapped when opened (an entry is read when asked for), merged with other runs'
entries on save."""

import json
import struct
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from ambient_rlhf.tensor_files import safetensors_dtype, save_tensors_streaming
from ambient_rlhf.models.features import FeatureStore


def test_streaming_writer_is_read_by_safetensors(tmp_path):
    g = torch.Generator().manual_seed(0)
    want = {"f32": torch.randn(3, 5, generator=g), "bf16": torch.randn(7, generator=g).to(torch.bfloat16),
            "i64": torch.arange(6).reshape(2, 3), "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4),
            "bool": torch.tensor([True, False, True]), "f16": torch.randn(2, 2, generator=g).half()}
    path = tmp_path / "x.safetensors"
    save_tensors_streaming(path, [(k, safetensors_dtype(v), tuple(v.shape)) for k, v in want.items()],
                           want.__getitem__, metadata={"format": "pt"})
    got = load_file(str(path))
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape and torch.equal(got[k], v), k
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    assert n % 8 == 0 and json.loads(raw[8:8 + n])["__metadata__"] == {"format": "pt"}
    # 15 + 7*2 + 6*8 + 4 + 0 + 3 + 4*2 bytes of data after the header
    assert len(raw) == 8 + n + 15 * 4 + 14 + 48 + 4 + 0 + 3 + 8


def test_streaming_writer_refuses_a_tensor_unlike_its_header(tmp_path):
    with pytest.raises(ValueError, match="header says"):
        save_tensors_streaming(tmp_path / "x", [("a", "F32", (2,))], lambda k: torch.zeros(3))
    with pytest.raises(ValueError, match="given twice"):
        save_tensors_streaming(tmp_path / "y", [("a", "F32", (1,))] * 2, lambda k: torch.zeros(1))


def test_store_reads_entries_from_the_file_when_asked_and_merges_on_save(tmp_path, tiny_model_path):
    fc = tmp_path / "fc"
    a = FeatureStore(fc, tiny_model_path)
    feats = {f"k{i}": torch.full((4,), float(i)) for i in range(3)}
    for k, v in feats.items():
        a.features[k] = v
    assert a.features.in_memory == 3
    a.save()
    assert a.features.in_memory == 0 and len(a.features) == 3  # now read from the file
    again = FeatureStore(fc, tiny_model_path)
    assert again.features.in_memory == 0 and sorted(again.features) == ["k0", "k1", "k2"]
    assert torch.equal(again.features["k1"], feats["k1"]) and again.features.get("nope") is None
    assert "k2" in again.features and "k3" not in again.features
    # two runs on one cache: each adds its own; on a key both wrote, the last saver's value is kept
    b = FeatureStore(fc, tiny_model_path)
    again.features["x"] = torch.ones(4)
    again.features["both"] = torch.zeros(4)
    b.features["y"] = torch.full((4,), 2.0)
    b.features["both"] = torch.full((4,), 7.0)
    again.save()
    b.save()
    final = FeatureStore(fc, tiny_model_path).features
    assert sorted(final) == ["both", "k0", "k1", "k2", "x", "y"]
    assert torch.equal(final["both"], torch.full((4,), 7.0)) and torch.equal(final["x"], torch.ones(4))
    assert torch.equal(final["k0"], feats["k0"])
    assert len(dict(final)) == len(final) == 6  # a mapping like any other


def _memory_mb(code: str) -> dict[str, float]:
    """Memory of a process running ``code`` (MB): its own (anonymous) resident memory at the
    peak, sampled every 5 ms, and at the end the resident pages mapped from files (the
    cache's pages it has read)."""
    prelude = textwrap.dedent("""
        import re, threading, time
        peak = [0.0]
        def _mb(field):
            return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024
        def _watch():
            while True:
                peak[0] = max(peak[0], _mb("RssAnon"))
                time.sleep(0.005)
        threading.Thread(target=_watch, daemon=True).start()
    """)
    out = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code) + textwrap.dedent("""
        time.sleep(0.05)
        print("MEM", max(peak[0], _mb("RssAnon")), _mb("RssFile"))
    """)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    anon, file = out.stdout.split("MEM")[-1].split()
    return {"anon": float(anon), "file": float(file)}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_opening_a_large_cache_reads_only_what_is_asked_for(tmp_path, tiny_model_path):
    """A 400 MB cache (10k features of 10240 floats).  Opened, with three entries read,
    neither the process's own memory nor its resident pages of the file grow by more than
    a few percent of the file (safetensors' load_file, which the cache used before, maps
    every tensor and reads all of the file's pages).  Saving it with one entry more writes
    one tensor at a time: the process's own memory grows with the number of entries
    (their names and offsets), not with their size."""
    fc = tmp_path / "fc"
    path = FeatureStore(fc, tiny_model_path).features_path
    fc.mkdir()
    n, d = 10_000, 10_240
    save_tensors_streaming(path, [(f"k{i}", "F32", (d,)) for i in range(n)], lambda k: torch.full((d,), float(k[1:])))
    size_mb = path.stat().st_size / 2**20
    assert size_mb > 390
    base = _memory_mb("import torch, safetensors.torch, ambient_rlhf.models.features")
    opened = _memory_mb(f"""
        from ambient_rlhf.models.features import FeatureStore
        s = FeatureStore({str(fc)!r}, {tiny_model_path!r})
        assert len(s.features) == {n} and s.features.in_memory == 0
        assert [float(s.features[f"k{{i}}"][0]) for i in (0, 7, {n - 1})] == [0, 7, {n - 1}]
    """)
    loaded = _memory_mb(f"""
        from safetensors.torch import load_file
        x = load_file({str(path)!r})
    """)
    saved = _memory_mb(f"""
        import torch
        from ambient_rlhf.models.features import FeatureStore
        s = FeatureStore({str(fc)!r}, {tiny_model_path!r})
        s.features["new"] = torch.ones({d})
        s.save()
        assert len(s.features) == {n + 1} and float(s.features["k9"][0]) == 9
    """)
    print("MB base", base, "opened", opened, "load_file", loaded, "saved", saved)
    assert opened["file"] - base["file"] < 0.05 * size_mb and opened["anon"] - base["anon"] < 0.1 * size_mb
    assert loaded["file"] - base["file"] > 0.8 * size_mb
    assert saved["anon"] - base["anon"] < 0.1 * size_mb
