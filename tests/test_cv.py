"""``sp4sc cv``: per-fold fits, resumable after a kill, summaries equal to an uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sp4sc.cli import main

ROOT = Path(__file__).resolve().parents[1]
KILLER = """
import os, signal
from pathlib import Path
from pytorch_lightning.callbacks import Callback


class KillInFold2(Callback):
    \"\"\"SIGKILL the process in the middle of epoch 1 of fold 2 (after epoch 0's checkpoint).\"\"\"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if Path(trainer.default_root_dir).name == "fold2" and trainer.current_epoch == 1 and batch_idx == 0:
            os.kill(os.getpid(), signal.SIGKILL)
"""


def make_esc_toy(root: Path, folds: int = 3, per_class: int = 3, swapped_folds: tuple[int, ...] = ()) -> Path:
    """An ESC-50-layout set: ``folds`` folds x 2 classes x ``per_class`` clips of 0.5 s, told apart by pitch.

    In ``swapped_folds`` the two classes' pitches are exchanged (a fold a model trained on the others gets wrong).
    """
    (root / "audio").mkdir(parents=True)
    (root / "meta").mkdir()
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    rng = np.random.default_rng(0)
    t = np.arange(8000) / 16000
    for fold in range(1, folds + 1):
        for target, cat in enumerate(("dog", "rain")):
            f0 = (500.0, 3000.0)[1 - target if fold in swapped_folds else target]
            for take in range(per_class):
                name = f"{fold}-{take}-A-{target}.wav"
                x = 0.3 * np.sin(2 * np.pi * f0 * (1 + 0.05 * rng.standard_normal()) * t)
                x += 0.05 * rng.standard_normal(t.size)
                sf.write(str(root / "audio" / name), x.astype(np.float32), 16000)
                rows.append(f"{name},{fold},{target},{cat},True,{take},A")
    (root / "meta" / "esc10.csv").write_text("\n".join(rows) + "\n")
    return root


def _args(data: Path, cache: Path, out: Path) -> list[str]:
    return ["--config", str(ROOT / "recipes" / "esc10_sp4sc.yaml"), "--data.root", str(data), "--folds", "1", "2",
            "--out", str(out), "--data.frontend", "demo", "--data.duration", "0.5", "--data.batch_size", "4",
            "--data.cache_dir", str(cache), "--data.progress", "false", "--data.num_workers", "0",
            "--model.backbone", "sp4sc_w32", "--model.spec_augment", "[4, 1, 4, 1]", "--trainer.max_epochs", "3",
            "--trainer.enable_model_summary", "false", "--trainer.logger", "false"]


def _summary(out: Path) -> dict:
    return json.loads((out / "cv.json").read_text())


@pytest.mark.slow
def test_cv_killed_and_resumed_equals_uninterrupted(tmp_path):
    data = make_esc_toy(tmp_path / "esc")
    cache = tmp_path / "cache"
    (tmp_path / "killer.py").write_text(textwrap.dedent(KILLER))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")])}

    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-m", "sp4sc", "cv", *_args(data, cache, killed),
                           "--trainer.callbacks+=killer.KillInFold2"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == -9, proc.stderr[-3000:]
    fold1 = killed / "fold1"
    assert (fold1 / "result.json").is_file() and not (killed / "fold2" / "result.json").exists()
    assert (killed / "fold2" / "checkpoints" / "last.ckpt").is_file()
    # stdout was a pipe: one plain progress line per epoch
    epoch_lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("epoch ")]
    assert len([ln for ln in epoch_lines if "val_acc" in ln]) >= 3, proc.stdout[-2000:]
    # the summary of the folds done so far was written when fold 1 finished
    partial = _summary(killed)
    assert partial["complete"] is False and partial["folds_to_do"] == [2]
    assert [f["fold"] for f in partial["folds"]] == [1] and sum(map(sum, partial["confusion"])) == 6
    assert "(1 of 2 folds done; still to do: 2)" in (killed / "cv.md").read_text()
    stamp = {p: p.stat().st_mtime_ns for p in (fold1 / "result.json", fold1 / "checkpoints" / "last.ckpt")}

    assert main(["cv", *_args(data, cache, killed)]) == 0  # resume
    for p, t in stamp.items():  # the finished fold was not retrained
        assert p.stat().st_mtime_ns == t, p
    whole = tmp_path / "whole"
    assert main(["cv", *_args(data, cache, whole)]) == 0

    a, b = _summary(killed), _summary(whole)
    assert a["complete"] is True and a["folds_to_do"] == [] and "folds done" not in (killed / "cv.md").read_text()
    for fa, fb in zip(a["folds"], b["folds"]):
        for key in ("fold", "accuracy", "class_avg_accuracy", "logloss", "epochs"):
            assert fa[key] == pytest.approx(fb[key], abs=1e-9), (key, fa, fb)
    assert a["confusion"] == b["confusion"] and sum(map(sum, a["confusion"])) == 12  # 2 folds x 6 clips
    assert a["mean"]["epochs"] == 3
    assert (killed / "cv.md").read_text().count("|") > 20
    assert "| accuracy, all clips |" in (killed / "metrics.md").read_text()
    for png in ("cv.png", "confusion.png"):
        assert (killed / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert json.loads((killed / "fold2" / "result.json").read_text())["resumed"] is True


def test_cv_bad_input(tmp_path, capsys):
    data = make_esc_toy(tmp_path / "esc", folds=2, per_class=1)
    assert main(["cv", "--config", "recipes/nope.yaml", "--data.root", str(data)]) != 0
    assert "--config recipes/nope.yaml: no such file" in capsys.readouterr().err
    assert main(["cv", "--config", str(ROOT / "recipes" / "esc10_sp4sc.yaml"), "--data.root",
                 str(tmp_path / "missing")]) != 0
    assert "--data.root" in capsys.readouterr().err
    assert main(["cv", "--config", str(ROOT / "recipes" / "esc10_sp4sc.yaml"), "--data.root", str(data),
                 "--data.fold", "2"]) != 0
    assert "set by cv per fold" in capsys.readouterr().err


def _fake_results(n_classes: int, folds: int, seed: int = 0) -> list[dict]:
    """Per-fold results as run_fold writes them, with random confusion matrices (no training)."""
    rng = np.random.default_rng(seed)
    classes = [f"class_{i:03d}" for i in range(n_classes)]
    out = []
    for fold in range(1, folds + 1):
        cm = rng.poisson(0.2, (n_classes, n_classes)) + np.diag(rng.integers(5, 9, n_classes))
        out.append({"fold": fold, "accuracy": float(np.trace(cm) / cm.sum()), "class_avg_accuracy": 0.8,
                    "logloss": 0.5 + 0.1 * fold, "epochs": 3, "wall_s": 10.0, "classes": classes,
                    "confusion": cm.tolist()})
    return out


def _png_width(path: Path) -> int:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big")


@pytest.mark.parametrize("n_classes", [10, 50])
def test_cv_figures_and_top_confusions_follow_the_class_count(tmp_path, n_classes):
    from sp4sc.commands.cv import write_summaries

    results = _fake_results(n_classes, folds=2)
    write_summaries(tmp_path, results, "recipes/esc10_sp4sc.yaml", "sp4sc cv ...", [1, 2])
    summed = np.sum([r["confusion"] for r in results], axis=0)
    np.fill_diagonal(summed, 0)
    for name in ("cv.md", "metrics.md"):
        text = (tmp_path / name).read_text()
        assert "## Most frequent confusions" in text, name
        rows = [ln for ln in text.split("## Most frequent confusions")[1].splitlines()
                if ln.startswith("| class_")]
        assert len(rows) == 10 and f" | {summed.max()} | " in rows[0], name
        true, pred = (int(c.strip()[-3:]) for c in rows[0].split("|")[1].split("→"))
        assert summed[true, pred] == summed.max(), name
    # cv.png: the bars, and the matrix beside them only while it is readable (10 classes), not at 50
    width = _png_width(tmp_path / "cv.png")
    assert (width > 1000) if n_classes == 10 else (width < 800)
    assert _png_width(tmp_path / "confusion.png") < 2200


def test_one_fold_is_reported_as_one_fold(tmp_path, monkeypatch, capsys):
    """No +/- and no std for one fold: null in cv.json, "1 fold" in cv.md, the console and the figure title."""
    import sp4sc.commands.cv as cv

    one, two = tmp_path / "one", tmp_path / "two"
    results = _fake_results(3, folds=2)
    cv.write_summaries(one, results[:1], "recipes/esc10_sp4sc.yaml", "sp4sc cv --folds 1", [1])
    s1 = json.loads((one / "cv.json").read_text())
    assert s1["complete"] is True and set(s1["std"].values()) == {None}
    assert s1["mean"]["logloss"] == pytest.approx(results[0]["logloss"])
    md = (one / "cv.md").read_text()
    assert "+/-" not in md and "±" not in md and "1 fold: no mean or spread" in md
    assert (one / "metrics.md").read_text().startswith("# esc10_sp4sc: 1 fold\n")

    cv.write_summaries(two, results, "recipes/esc10_sp4sc.yaml", "sp4sc cv --folds 1 2", [1, 2])
    s2 = json.loads((two / "cv.json").read_text())
    assert s2["std"]["logloss"] == pytest.approx(0.1 / 2 ** 0.5)  # sample std of 0.6 and 0.7
    assert "| mean +/- std (2 folds) |" in (two / "cv.md").read_text()
    assert (two / "metrics.md").read_text().startswith("# esc10_sp4sc: 2 folds summed\n")

    for summary, expected in ((s1, "1 fold: accuracy "), (s2, "2 folds: accuracy ")):
        monkeypatch.setattr(cv, "run_cv", lambda argv, s=summary: s | {"out": "runs/cv/x"})
        assert cv.main_argv([]) == 0
        out = capsys.readouterr().out
        assert out.startswith(expected) and (("+/-" in out) == (summary is s2)), out


def test_recipe_is_named_relative_to_the_project(tmp_path, monkeypatch):
    """A recipe inside the project is named recipes/<name>.yaml in cv.json and cv.md, however it was typed."""
    import sp4sc.commands.cv as cv

    data = make_esc_toy(tmp_path / "esc", folds=2, per_class=1)
    fake = {r["fold"]: r for r in _fake_results(2, folds=2)}
    monkeypatch.setattr(cv, "run_fold", lambda args, rest, fold, out: fake[fold])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working folder is not the project
    absolute = str(ROOT / "recipes" / "esc10_sp4sc.yaml")
    summary = cv.run_cv(["--config", absolute, "--data.root", str(data), "--folds", "1", "2",
                         "--out", str(tmp_path / "out")])
    assert summary["recipe"] == "recipes/esc10_sp4sc.yaml"
    saved = json.loads((tmp_path / "out" / "cv.json").read_text())
    assert saved["recipe"] == "recipes/esc10_sp4sc.yaml" and absolute not in saved["command"]
    assert "--config recipes/esc10_sp4sc.yaml" in saved["command"]
    md = (tmp_path / "out" / "cv.md").read_text()
    assert md.startswith("# Cross-validation of `recipes/esc10_sp4sc.yaml`") and absolute not in md
    # a recipe outside the project keeps its full path
    own = tmp_path / "mine.yaml"
    own.write_text((ROOT / "recipes" / "esc10_sp4sc.yaml").read_text())
    assert cv.recipe_label(str(own)) == str(own.resolve())
    assert cv.recipe_label("../elsewhere/../mine.yaml") == str(own.resolve())
