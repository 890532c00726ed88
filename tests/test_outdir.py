"""The one output-directory policy (ambient_rlhf.outdir), on tmp dirs: no training."""

from __future__ import annotations

import json

import pytest

from ambient_rlhf import AmbientError
from ambient_rlhf.checkpoint import save_checkpoint
from ambient_rlhf.outdir import STAGE_FILE, changed_keys, prepare_out

CFG = {"data": "d", "out": "o", "lr": 1e-4, "steps": 4, "resume": False, "overwrite": False, "lora": {"r": 8}}


def _interrupted(out, stage="sft", cfg=CFG, step=None):
    """A run stopped after it started (and, with ``step``, after that checkpoint)."""
    prepare_out(out, stage, cfg)
    if step is not None:
        save_checkpoint(out, step, {"step": step})
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    return out


def _finished(out, stage="sft", cfg=CFG):
    out.mkdir(parents=True)
    (out / "manifest.json").write_text(json.dumps({"stage": stage, "config": cfg}))
    return out


def test_fresh_dir_is_created_and_recorded(tmp_path):
    out = tmp_path / "a" / "sft"
    p = prepare_out(out, "sft", CFG)
    assert p.checkpoint is None and not p.finished and out.is_dir()
    rec = json.loads((out / STAGE_FILE).read_text())
    # out / resume / overwrite do not change results: they are not recorded
    assert rec["stage"] == "sft" and rec["config"] == {"data": "d", "lr": 1e-4, "steps": 4, "lora": {"r": 8}}
    # an empty existing directory is fine too, and --resume with nothing to resume starts
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare_out(empty, "sft", CFG, resume=True).checkpoint is None


def test_another_stage_is_refused_even_with_resume(tmp_path):
    out = _finished(tmp_path / "o", stage="rm")
    for resume in (False, True):
        with pytest.raises(AmbientError, match=r"holds the output of `ambient rm`; choose another --out"):
            prepare_out(out, "sft", CFG, resume=resume)
    assert (out / "manifest.json").is_file()
    out2 = _interrupted(tmp_path / "o2", stage="rl", step=2)
    with pytest.raises(AmbientError, match="ambient rl"):
        prepare_out(out2, "sft", CFG, resume=True)
    # --overwrite is the explicit way to replace it
    prepare_out(out, "sft", CFG, overwrite=True)
    assert not (out / "manifest.json").exists() and json.loads((out / STAGE_FILE).read_text())["stage"] == "sft"


def test_another_config_is_refused_naming_the_keys(tmp_path):
    out = _interrupted(tmp_path / "o", step=2)
    changed = dict(CFG, lr=3e-4, lora={"r": 4})
    for resume in (False, True):
        with pytest.raises(AmbientError, match=r"another config \(differs in: lora\.r, lr\).*--overwrite"):
            prepare_out(out, "sft", changed, resume=resume)
    assert (out / "checkpoints" / "step-2" / "SHA256SUMS").is_file()
    fin = _finished(tmp_path / "f")
    with pytest.raises(AmbientError, match=r"differs in: steps"):
        prepare_out(fin, "sft", dict(CFG, steps=5), resume=True)


def test_same_config_resumes_from_the_latest_checkpoint(tmp_path):
    out = _interrupted(tmp_path / "o", step=2)
    save_checkpoint(out, 4, {"step": 4})
    # out, resume, overwrite differ: they do not count
    p = prepare_out(out, "sft", dict(CFG, out="elsewhere", resume=True), resume=True)
    assert p.checkpoint == out / "checkpoints" / "step-4" and not p.finished
    assert (out / "metrics.jsonl").is_file()  # nothing cleared
    # without --resume the same directory is refused, saying what to do
    with pytest.raises(AmbientError, match=r"interrupted run of this config; pass --resume"):
        prepare_out(out, "sft", CFG)


def test_resume_before_the_first_checkpoint_starts_over(tmp_path):
    out = _interrupted(tmp_path / "o")
    p = prepare_out(out, "sft", CFG, resume=True)
    assert p.checkpoint is None and not (out / "metrics.jsonl").exists()
    assert (out / STAGE_FILE).is_file()


def test_finished_run_is_left_as_it_is(tmp_path):
    out = _finished(tmp_path / "o")
    (out / "model.safetensors").write_bytes(b"w")
    p = prepare_out(out, "sft", CFG, resume=True)
    assert p.finished and p.checkpoint is None
    assert sorted(x.name for x in out.iterdir()) == ["manifest.json", "model.safetensors"]
    with pytest.raises(AmbientError, match="finished run of this config; nothing to do"):
        prepare_out(out, "sft", CFG)


def test_foreign_files_are_refused(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for resume in (False, True):
        with pytest.raises(AmbientError, match=r"output directory exists and holds files no ambient stage wrote \(notes"):
            prepare_out(out, "rl", CFG, resume=resume)
    assert (out / "notes.txt").read_text() == "mine"
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(AmbientError, match="is a file"):
        prepare_out(f, "rl", CFG, overwrite=True)


@pytest.mark.parametrize("where", ["same", "inside", "contains"])
def test_out_overlapping_an_input_is_refused_before_anything_is_touched(tmp_path, where):
    data = tmp_path / "runs" / "data"
    data.mkdir(parents=True)
    (data / "responses.parquet").write_bytes(b"p")
    out = {"same": data, "inside": data / "sft", "contains": tmp_path / "runs"}[where]
    verb = {"same": "is", "inside": "lies inside", "contains": "contains"}[where]
    for resume, overwrite in ((False, True), (True, False), (False, False)):
        with pytest.raises(AmbientError, match=rf"--out .* {verb} the input .*even with --overwrite"):
            prepare_out(out, "sft", CFG, resume=resume, overwrite=overwrite, inputs=["default", data, ""])
    assert (data / "responses.parquet").read_bytes() == b"p"
    assert sorted(x.name for x in data.iterdir()) == ["responses.parquet"]
    # a file input counts too, and so does a path reached through a symlink
    link = tmp_path / "link"
    link.symlink_to(data)
    with pytest.raises(AmbientError, match="is the input"):
        prepare_out(link, "sft", CFG, overwrite=True, inputs=[data])
    with pytest.raises(AmbientError, match="contains the input"):
        prepare_out(data, "data", CFG, overwrite=True, inputs=[data / "responses.parquet"])


class FakeAccelerator:
    def __init__(self, main: bool, log: list):
        self.is_main_process, self.log = main, log

    def wait_for_everyone(self):
        self.log.append("barrier")


def test_several_processes_check_everywhere_and_write_on_main_only(tmp_path):
    log: list = []
    out = tmp_path / "o"
    prepare_out(out, "rm", CFG, accelerator=FakeAccelerator(False, log))
    assert log == ["barrier", "barrier"] and not out.exists()  # a non-main process only waits
    prepare_out(out, "rm", CFG, accelerator=FakeAccelerator(True, log))
    assert (out / STAGE_FILE).is_file()
    # every process raises the same error, before its first barrier
    log.clear()
    for main in (True, False):
        with pytest.raises(AmbientError, match="pass --resume"):
            prepare_out(out, "rm", CFG, accelerator=FakeAccelerator(main, log))
    assert log == []


def test_changed_keys():
    assert changed_keys({"a": 1, "n": {"x": 1, "y": 2}}, {"a": 1, "n": {"x": 1, "y": 3}, "b": 0}) == ["b", "n.y"]
    assert changed_keys({"a": None}, {}) == ["a"]
