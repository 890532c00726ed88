"""An output place that cannot be written -- read-only, full, forbidden -- is a one-line
error that says what and where, exit code 2 (issue 13 item 6); before, an OSError
traceback came from deep in io, logging or the checkpoint writer.

The tests run as root, for whom a chmod'ed directory stays writable (checked below), so
"read-only" is a directory under /sys, where even root may not create anything (EPERM),
and "full" is a file that is a link to /dev/full (every write: ENOSPC)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ambient_rlhf import AmbientError
from ambient_rlhf.io import atomic_dir, write_json
from ambient_rlhf.logging import MetricsWriter
from ambient_rlhf.outdir import prepare_out

READ_ONLY = Path("/sys/ambient-rlhf-test/out")


def _unwritable():
    try:
        os.mkdir(READ_ONLY.parent)
    except OSError:
        return
    os.rmdir(READ_ONLY.parent)
    pytest.skip("/sys is writable here")


def test_chmod_does_not_stop_root(tmp_path):
    # why the tests below use /sys: as root, a 0o555 directory is still writable
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    try:
        if os.geteuid() != 0:
            pytest.skip("not root: chmod would do")
        (d / "x").write_text("still writable")
    finally:
        d.chmod(0o755)


def test_unwritable_output_dir_is_one_line(tmp_path):
    _unwritable()
    with pytest.raises(AmbientError, match=rf"^{READ_ONLY}: cannot write the output directory: Operation not "
                                           r"permitted .*choose a writable --out$"):
        with atomic_dir(READ_ONLY):
            pass
    with pytest.raises(AmbientError, match=rf"^{READ_ONLY}: cannot write the output directory"):
        prepare_out(READ_ONLY, "sft", {"lr": 1.0})
    with pytest.raises(AmbientError, match=r"cannot write a JSON file"):
        write_json(READ_ONLY / "x.json", {})


def test_safetensors_write_error_is_one_line():
    # safetensors reports I/O errors with its own exception type ("... (os error 13) ...")
    import torch

    from ambient_rlhf.checkpoint import save_tensors

    _unwritable()
    with pytest.raises(AmbientError, match=r"^/sys/ambient-rlhf-test.safetensors: cannot write tensors: "
                                           r"Permission denied; choose a writable --out$"):
        save_tensors("/sys/ambient-rlhf-test.safetensors", {"w": torch.zeros(3)})


def test_full_disk_is_one_line(tmp_path):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    w = MetricsWriter(tmp_path)
    (tmp_path / "metrics.jsonl").symlink_to("/dev/full")
    with pytest.raises(AmbientError, match=r"metrics.jsonl: cannot write metrics: No space left on device; "
                                           r"free some space or choose another --out"):
        w.log(1, {"loss": 1.0})


def test_data_build_to_unwritable_out_exits_2(tmp_path):
    _unwritable()
    (tmp_path / "table.csv").write_text("x\n1\n")  # never read: the output is refused first
    src = Path(__file__).resolve().parents[1] / "src"
    env = dict(os.environ, PYTHONPATH=str(src), AMBIENT_PROGRESS="0")
    r = subprocess.run([sys.executable, "-c", "import sys; from ambient_rlhf.cli import main; sys.exit(main())",
                        "data", "build", str(tmp_path / "table.csv"), "--out", str(READ_ONLY)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {READ_ONLY}: cannot write the output directory") and "Traceback" not in r.stderr


def test_full_disk_while_writing_an_output_dir(tmp_path):
    # a stage's outputs are written in atomic_dir's temporary directory; a full disk there
    # is one line naming the output, and nothing is left behind
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    out = tmp_path / "out"
    with pytest.raises(AmbientError, match=rf"^{out}: cannot write the output: No space left on device"):
        with atomic_dir(out) as tmp:
            (tmp / "big.bin").symlink_to("/dev/full")
            with open(tmp / "big.bin", "wb") as f:
                f.write(b"x" * 100_000)
    assert not out.exists() and os.listdir(tmp_path) == []
