"""``sp4sc cv gap``: each fold's model scored on its own training clips beside its validation clips."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sp4sc.cli import main
from sp4sc.commands.cv_gap import gap

ROOT = Path(__file__).resolve().parents[1]


def _swapped_toy(root: Path) -> Path:
    """ESC layout, 3 folds x 2 classes x 4 clips; fold 1 has the two classes' pitches swapped.

    A model that learns the training folds (2 and 3) therefore fits its training clips and gets the
    validation fold (1) wrong: the two scores can only come apart if each is computed on its own clips.
    """
    (root / "audio").mkdir(parents=True)
    (root / "meta").mkdir()
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    rng = np.random.default_rng(0)
    t = np.arange(8000) / 16000
    for fold in (1, 2, 3):
        for target, cat in enumerate(("dog", "rain")):
            f0 = (500.0, 3000.0)[target if fold != 1 else 1 - target]
            for take in range(4):
                name = f"{fold}-{take}-A-{target}.wav"
                x = 0.3 * np.sin(2 * np.pi * f0 * (1 + 0.03 * rng.standard_normal()) * t)
                x += 0.02 * rng.standard_normal(t.size)
                sf.write(str(root / "audio" / name), x.astype(np.float32), 16000)
                rows.append(f"{name},{fold},{target},{cat},True,{take},A")
    (root / "meta" / "esc10.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gap")
    data = _swapped_toy(tmp / "esc")
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
