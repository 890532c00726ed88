"""`ambient data ...` through the real entry point."""

import json
import subprocess
import sys

import pytest

from ambient_rlhf.cli import main


def test_build_through_main(dump_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["data", "build", str(dump_dir), "--out", str(out), "--max-bad-fraction", "0.2",
               "--subreddit", "asktest", "labels.min_score_ratio=3", "splits.train=0", "splits.valid=0", "splits.test=1"])
    assert rc == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["config"]["labels"]["min_score_ratio"] == 3.0 and m["config"]["filters"]["subreddit"] == "asktest"
    # ratio >= 3 removes (c3,c1), (c3,c5), (c5,c2) (2.5) and (c2,c4) from the 8 pairs of s1
    assert m["counts"]["pairs_per_split"] == {"test": 4}
    assert "wrote" in capsys.readouterr().out
    # the existing output is protected; --overwrite replaces it
    assert main(["data", "build", str(dump_dir), "--out", str(out), "--max-bad-fraction", "0.2"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["data", "build", str(dump_dir), "--out", str(out), "--max-bad-fraction", "0.2", "--overwrite"]) == 0


def test_yaml_config_and_overrides(dump_dir, tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("max_bad_fraction: 0.2\nsplits: {train: 0, valid: 0, test: 1}\nlabels:\n  min_score_ratio: 3\n")
    out = tmp_path / "out"
    # the key=value override wins over the file (ratio 2 -> the 8 pairs of s1)
    assert main(["data", "build", str(dump_dir), "--out", str(out), "--config", str(y), "labels.min_score_ratio=2"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["config"]["labels"]["min_score_ratio"] == 2.0 and m["counts"]["pairs_per_split"] == {"test": 8}


@pytest.mark.parametrize("args, msg", [
    (["missing_dir"], "missing_dir: no such file or directory"),
    (["DUMP", "labels.nope=1"], "unknown config key 'labels.nope'"),
    (["DUMP", "--format", "table"], "missing columns"),
])
def test_one_line_errors(dump_dir, tmp_path, capsys, args, msg):
    args = [str(dump_dir) if a == "DUMP" else (str(tmp_path / a) if a == "missing_dir" else a) for a in args]
    rc = main(["data", "build", *args, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: ")


def test_simulate_dispatches_to_the_simulator(monkeypatch):
    import types

    seen = []
    fake = types.ModuleType("ambient_rlhf.cli.simulate")
    fake.cli = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "ambient_rlhf.cli.simulate", fake)
    assert main(["data", "simulate", "--out", "x", "seed=1"]) == 0
    assert seen == [["--out", "x", "seed=1"]]


def test_data_stage_imports_no_transformers_nor_upper_modules(dump_dir, tmp_path):
    code = (
        "import sys; from ambient_rlhf.cli import main; "
        f"rc = main(['data', 'build', {str(dump_dir)!r}, '--out', {str(tmp_path / 'o')!r}, '--max-bad-fraction', '0.2']); "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('transformers', 'torch') or "
        "m.startswith(('ambient_rlhf.models', 'ambient_rlhf.train', 'ambient_rlhf.rl', 'ambient_rlhf.eval'))]; "
        "print(rc, bad)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={
        **__import__("os").environ, "AMBIENT_PROGRESS": "0"})
    assert r.stdout.strip().splitlines()[-1] == "0 []", r.stderr[-2000:]
