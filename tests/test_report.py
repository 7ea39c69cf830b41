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


# ------------------------------------------------------- many classes: layout and top confusions

def _many(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    cm = rng.poisson(0.3, (n, n)) + np.diag(rng.integers(20, 40, n))
    return cm, [f"class_{i:03d}" for i in range(n)]


@pytest.mark.parametrize("n", [2, 10, 20, 21, 50, 100])
def test_confusion_figure_size_and_annotation_follow_the_class_count(n):
    from sp4sc.metrics import ANNOTATE_MAX, confusion_layout
    from sp4sc.training.report import eval_confusion_figure

    cm, classes = _many(n)
    layout = confusion_layout(n, label_chars=9)
    assert layout.annotate == (n <= ANNOTATE_MAX) and layout.panels == (2 if n <= ANNOTATE_MAX else 1)
    fig = eval_confusion_figure(cm, classes)
    # numbers in the cells: every non-zero cell of both panels up to 20 classes, none past it
    texts = sum(len(ax.texts) for ax in fig.axes)
    assert texts == (2 * int(np.count_nonzero(cm)) if n <= ANNOTATE_MAX else 0)
    width, height = _png_size(confusion_png_bytes(cm, classes))
    assert abs(width - layout.figsize[0] * layout.dpi) <= 1 and abs(height - layout.figsize[1] * layout.dpi) <= 1
    # readable: names of at least 6 points, a cell at least as tall as its name, and no 5,000-pixel images
    assert layout.tick_fontsize >= 6 and layout.cell_in * 72 >= layout.tick_fontsize
    assert max(width, height) <= 2200
    if n > ANNOTATE_MAX:
        assert abs(width - height) < 0.1 * width  # one square panel, not two side by side


def test_top_confusions_rank_pairs_by_count_then_share():
    from sp4sc.training.report import top_confusions, top_confusions_md

    classes = ["a", "b", "c"]
    cm = np.array([[8, 2, 0],   # a: 10 clips, 2 taken for b (20 %)
                   [1, 2, 2],   # b: 5 clips, 2 taken for c (40 %), 1 for a
                   [0, 0, 4]])  # c: perfect
    top = top_confusions(cm, classes, k=10)
    assert top == [
        {"true": "b", "predicted": "c", "count": 2, "share": pytest.approx(0.4)},  # same count, larger share first
        {"true": "a", "predicted": "b", "count": 2, "share": pytest.approx(0.2)},
        {"true": "b", "predicted": "a", "count": 1, "share": pytest.approx(0.2)},
    ]
    assert len(top_confusions(*_many(50), k=10)) == 10
    assert top_confusions(np.diag([3, 4]), ["x", "y"]) == []
    text = "\n".join(top_confusions_md(np.array([[3, 1], [0, 2]]), ["x", "y"]))
    assert "1 clip misclassified; the most frequent (true → predicted) pair," in text and "| x → y | 1 | 25.0 % |" in text
    assert "No clip was misclassified." in "\n".join(top_confusions_md(np.diag([3, 4]), ["x", "y"]))


def test_metrics_md_ends_with_the_most_frequent_confusions(tmp_path):
    res, cm = _results()
    text = write_metrics_md(res, tmp_path / "metrics.md", title="t", classes=SCENES).read_text()
    section = text.split("## Most frequent confusions", 1)[1]
    rows = [ln for ln in section.splitlines() if "→" in ln and ln.startswith("| ") and "true →" not in ln]
    off = cm.copy()
    np.fill_diagonal(off, 0)
    assert len(rows) == min(10, int(np.count_nonzero(off)))
    i, j = np.unravel_index(np.argmax(off), off.shape)  # the largest count is on the first row
    assert rows[0].startswith(f"| {SCENES[i]} → {SCENES[j]} | {off[i, j]} | ")
    assert f"{int(off.sum())} clips misclassified" in section
