"""``sp4sc cv gap``: each fold's model scored on its own training clips beside its validation clips."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sp4sc.cli import main
from sp4sc.commands.cv_gap import gap
from test_cv import make_esc_toy

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gap")
    # fold 1 has the two classes' pitches swapped: a model that learns folds 2-3 fits its training clips
    # and gets fold 1 wrong, so the two scores only come apart if each is computed on its own clips
    data = make_esc_toy(tmp / "esc", folds=3, per_class=4, swapped_folds=(1,))
    out = tmp / "run"
    rc = main(["cv", "--config", str(ROOT / "recipes" / "esc10_sp4sc.yaml"), "--data.root", str(data),
               "--folds", "1", "--out", str(out), "--data.frontend", "demo", "--data.duration", "0.5",
               "--data.batch_size", "4", "--data.cache_dir", str(tmp / "cache"), "--data.progress", "false",
               "--data.num_workers", "0", "--model.backbone", "sp4sc_w32", "--model.spec_augment", "[4, 1, 4, 1]",
               "--model.mixup_alpha", "0", "--model.lr", "1e-2", "--trainer.max_epochs", "8",
               "--trainer.enable_model_summary", "false", "--trainer.logger", "false"])
    assert rc == 0
    return data, out


def test_training_and_validation_clips_are_scored_apart(cv_run, capsys):
    data, out = cv_run
    report = gap(out)
    (row,) = report["per_fold"]
    assert row["fold"] == 1 and row["train"]["clips"] == 16 and row["val"]["clips"] == 8
    # the recomputed validation score is the one sp4sc cv wrote
    assert row["val_matches_result"]
    result = json.loads((out / "fold1" / "result.json").read_text())
    assert row["val"]["accuracy"] == pytest.approx(result["accuracy"])
    # trained on folds 2-3, it fits them and inverts fold 1 (pitches swapped there)
    assert row["train"]["accuracy"] >= 0.9 and row["val"]["accuracy"] <= 0.25
    assert row["gap"] == pytest.approx(row["train"]["accuracy"] - row["val"]["accuracy"])

    assert main(["cv", "gap", str(out), "--clips", "5"]) == 0
    printed = capsys.readouterr().out
    assert "| 1 | 5 |" in printed and "Warning" not in printed


def test_a_result_the_checkpoint_does_not_reproduce_is_flagged(cv_run, tmp_path, capsys):
    _, out = cv_run
    copy = tmp_path / "copy"
    shutil.copytree(out / "fold1", copy / "fold1")
    path = copy / "fold1" / "result.json"
    result = json.loads(path.read_text())
    result["accuracy"] = 1.0 - result["accuracy"]
    path.write_text(json.dumps(result))
    assert gap(copy)["per_fold"][0]["val_matches_result"] is False
    assert main(["cv", "gap", str(copy)]) == 0
    assert "Warning: fold(s) 1" in capsys.readouterr().out


def test_bad_input_is_one_line(cv_run, tmp_path, capsys):
    data, out = cv_run
    assert main(["cv", "gap", str(tmp_path / "nowhere")]) != 0
    assert "no such folder" in capsys.readouterr().err
    copy = tmp_path / "nockpt"
    shutil.copytree(out / "fold1", copy / "fold1")
    (copy / "fold1" / "checkpoints" / "last.ckpt").unlink()
    assert main(["cv", "gap", str(copy)]) != 0
    err = capsys.readouterr().err
    assert "last.ckpt: missing" in err and len(err.strip().splitlines()) == 1
    assert main(["cv", "gap", str(out), "--data.root", str(tmp_path / "moved")]) != 0
    err = capsys.readouterr().err
    assert "moved is not a folder here; pass --data.root" in err
    assert main(["cv", "gap", str(out), "--clips", "0"]) != 0
    assert "--clips" in capsys.readouterr().err
