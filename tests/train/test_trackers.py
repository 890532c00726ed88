"""``report_to``: metrics reach experiment trackers through accelerate's integrations, and
a tracker that is not installed costs one notice, not the run (issue 14 item 6)."""

import pytest

from ambient_rlhf import AmbientError
from ambient_rlhf.config import load_config
from ambient_rlhf.logging import MetricsWriter, read_jsonl
from ambient_rlhf.train.trackers import make_trackers

ROWS = [(1, {"train/loss": 2.5, "train/lr": 1e-4}), (2, {"train/loss": 2.25, "note": "text"}),
        (3, {"train/loss": float("nan"), "train/lr": 5e-5})]


def test_tensorboard_reads_what_the_metrics_writer_logged(tmp_path):
    acc = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                              reason="tensorboard is not installed (the `tensorboard` extra)")
    trackers = make_trackers(["tensorboard"], tmp_path, {"learning_rate": 1e-4, "lora": {"r": 4}, "data": ["a", "b"]})
    assert [t.name for t in trackers] == ["tensorboard"]
    w = MetricsWriter(tmp_path, trackers=trackers)
    for step, row in ROWS:
        w.log(step, row)
    w.close()
    ev = acc.EventAccumulator(str(tmp_path / "tensorboard"))
    ev.Reload()
    # numbers only; NaN is written as null in metrics.jsonl and skipped, text is not a scalar
    assert [(e.step, e.value) for e in ev.Scalars("train/loss")] == [(1, 2.5), (2, 2.25)]
    assert [(e.step, e.value) for e in ev.Scalars("train/lr")] == [(1, pytest.approx(1e-4)), (3, pytest.approx(5e-5))]
    assert [r["train/loss"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [2.5, 2.25, None]


def test_a_tracker_that_is_not_installed_is_one_notice(tmp_path, warnings_seen):
    from accelerate.tracking import get_available_trackers

    if "mlflow" in {str(t) for t in get_available_trackers()}:
        pytest.skip("mlflow is installed here")
    assert make_trackers(["mlflow", "none"], tmp_path) == []
    notices = [w for w in warnings_seen if "report_to=mlflow" in w]
    assert len(notices) == 1 and "pip install mlflow" in notices[0] and "metrics.jsonl only" in notices[0]
    w = MetricsWriter(tmp_path, trackers=[])
    w.log(1, {"x": 1.0})
    assert read_jsonl(tmp_path / "metrics.jsonl")[0]["x"] == 1.0


def test_an_unknown_tracker_is_refused_before_any_work(tmp_path):
    from ambient_rlhf.train.rl.config import RLConfig, _validate

    cfg = load_config(RLConfig, None, [f"data={tmp_path}", f"out={tmp_path / 'o'}", "report_to=[tensorbord]"])
    with pytest.raises(AmbientError, match=r"unknown \['tensorbord'\]; choose from \[.*'tensorboard'"):
        _validate(cfg, 1)
    assert load_config(RLConfig, None, ["report_to=[]"]).report_to == []


def test_the_trackers_change_no_result():
    """A resume or a re-run of `ambient run` may change report_to: it is left out of the
    comparisons (outdir's result config, the run's stage key)."""
    import dataclasses
    from pathlib import Path

    from ambient_rlhf.config import to_dict
    from ambient_rlhf.outdir import result_config
    from ambient_rlhf.run import Stage, stage_key
    from ambient_rlhf.train.rl.config import RLConfig

    a = RLConfig(data="d", out="o")
    b = dataclasses.replace(a, report_to=["wandb", "mlflow"])
    assert result_config(to_dict(a)) == result_config(to_dict(b))
    assert stage_key(Stage("rl", "rl", a), Path("run"), []) == stage_key(Stage("rl", "rl", b), Path("run"), [])
    c = dataclasses.replace(a, learning_rate=2e-5)  # a setting that does change the result
    assert stage_key(Stage("rl", "rl", a), Path("run"), []) != stage_key(Stage("rl", "rl", c), Path("run"), [])
