"""confusion.png and metrics.md: what they hold, bad input, atomic writes, and `sp4sc test` writing both."""

from __future__ import annotations

import numpy as np
import pytest

from sp4sc.constants import SCENES
from sp4sc.errors import Sp4scError
from sp4sc.metrics import dcase_results
from sp4sc.training.report import (
    confusion_png_bytes,
    metrics_md_text,
    write_confusion_png,
    write_eval_report,
    write_metrics_md,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _results(seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(40) % 10
    p = rng.random((40, 10)) + 3.0 * np.eye(10)[y] * (rng.random(40) > 0.3)[:, None]
    devices = [("a", "b", "s1")[i % 3] for i in range(40)]
    res = dcase_results(y, p, SCENES, devices)
    cm = np.zeros((10, 10), dtype=int)
    np.add.at(cm, (y, p.argmax(1)), 1)
    res["confusion"] = cm.tolist()
    return res, cm


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_confusion_png_has_two_side_by_side_panels(tmp_path):
    _, cm = _results()
    path = write_confusion_png(cm, SCENES, tmp_path / "sub" / "confusion.png", title="t")
    data = path.read_bytes()
    width, height = _png_size(data)
    assert width > 1.8 * height  # counts and row-normalised panels side by side
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["confusion.png"]  # no temporary left


def test_metrics_md_lists_overall_classes_and_devices(tmp_path):
    res, _ = _results()
    text = write_metrics_md(res, tmp_path / "metrics.md", title="test split").read_text()
    assert text.startswith("# test split")
    acc = f"{100 * res['overall']['accuracy']:.1f} %"
    assert f"| accuracy, class-averaged (DCASE) | {acc} |" in text
    assert f"| log loss | {res['overall']['logloss']:.3f} |" in text
    for name in (*SCENES, "a", "b", "s1"):
        assert f"| {name} | " in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| s1 |"))
    assert row == f"| s1 | {100 * res['device_wise']['s1']['accuracy']:.1f} | {res['device_wise']['s1']['logloss']:.3f} |"


def test_eval_report_writes_both_into_the_folder(tmp_path):
    res, _ = _results()
    md, png = write_eval_report(res, SCENES, tmp_path)
    assert (md.name, png.name) == ("metrics.md", "confusion.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png", "metrics.md"]
    without = {k: v for k, v in res.items() if k != "confusion"}
    md2, png2 = write_eval_report(without, SCENES, tmp_path / "nocm")
    assert md2.exists() and png2 is None


def test_bad_input_is_one_clear_error(tmp_path):
    _, cm = _results()
    with pytest.raises(Sp4scError, match=r"shape \(10, 10\), expected \(3, 3\)"):
        confusion_png_bytes(cm, ["a", "b", "c"])
    with pytest.raises(Sp4scError, match="non-negative"):
        confusion_png_bytes(-np.ones((2, 2)), ["a", "b"])
    with pytest.raises(Sp4scError, match="dcase_results layout"):
        metrics_md_text({"accuracy": 0.5})


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    _, cm = _results()
    path = write_confusion_png(cm, SCENES, tmp_path / "confusion.png")
    before = path.read_bytes()
    import sp4sc.training.report as report

    def boom(*a, **k):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(report, "confusion_png_bytes", boom)
    with pytest.raises(RuntimeError):
        write_confusion_png(cm * 2, SCENES, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png"]


@pytest.mark.slow
def test_sp4sc_test_writes_figures_into_the_run_folder(tmp_path, capsys, caplog, recwarn):
    from pathlib import Path

    from sp4sc.cli import main
    from sp4sc.data.toy import ensure_toy_dataset

    root = ensure_toy_dataset(tmp_path / "toy", n_per_class_device=2, duration=1.0)
    out = tmp_path / "run"
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"
    rc = main(["test", "--config", str(recipe), "--data.dataset", "toy", "--data.root", str(root),
               "--data.cache_dir", str(tmp_path / "cache"), "--data.toy_n_per_class_device", "2",
               "--data.toy_duration", "1.0", "--data.duration", "1.0", "--data.batch_size", "8",
               "--data.num_workers", "0", "--data.progress", "false", "--trainer.default_root_dir", str(out),
               "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
               "--trainer.logger", "false"])
    err = capsys.readouterr().err
    assert rc == 0, err[-2000:]
    assert _png_size((out / "confusion.png").read_bytes())[0] > 0
    text = (out / "metrics.md").read_text()
    assert text.startswith("# test split") and "| airport |" in text
    assert "confusion.png" in err and "metrics.md" in err
    # quiet: Lightning's litlogger advert and torch's LeafSpec deprecation (inside Lightning) stay off the terminal
    assert not [r for r in caplog.records if "litlogger" in r.getMessage()] and "litlogger" not in err
    assert not [w for w in recwarn.list if "LeafSpec" in str(w.message)]
