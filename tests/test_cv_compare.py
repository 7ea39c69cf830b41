"""``sp4sc cv compare A B``: folds paired, the paired mean difference, per-class accuracy, clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sp4sc.cli import main
from sp4sc.commands.cv_compare import compare
from sp4sc.errors import Sp4scError

CLASSES = ["a", "b"]


def _fold(root: Path, fold: int, acc: float, confusion: list[list[int]], logloss: float = 1.0) -> None:
    d = root / f"fold{fold}"
    d.mkdir(parents=True)
    (d / "result.json").write_text(json.dumps({"fold": fold, "accuracy": acc, "logloss": logloss,
                                               "classes": CLASSES, "confusion": confusion}))


def test_folds_are_paired_and_classes_pooled(tmp_path, capsys):
    a, b = tmp_path / "A", tmp_path / "B"
    _fold(a, 1, 0.50, [[2, 2], [0, 4]])
    _fold(a, 2, 0.75, [[3, 1], [1, 3]])
    _fold(a, 3, 0.90, [[4, 0], [0, 4]])  # B has no fold 3: left out
    _fold(b, 1, 0.625, [[4, 0], [1, 3]])
    _fold(b, 2, 0.625, [[4, 0], [3, 1]])
    r = compare(a, b)
    assert r["folds"] == [1, 2]
    assert [round(x["diff"], 3) for x in r["per_fold"]] == [0.125, -0.125]
    assert r["mean"]["diff"] == pytest.approx(0.0) and r["std"]["diff"] == pytest.approx(0.1767767, abs=1e-6)
    # class a: A 5 of 8, B 8 of 8; class b: A 7 of 8, B 4 of 8 (folds 1 and 2 pooled)
    (ca, cb) = r["per_class"]
    assert (ca["a"], ca["b"], cb["a"], cb["b"]) == (5 / 8, 1.0, 7 / 8, 0.5)
    assert main(["cv", "compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "| 1 | 50.0 % | 62.5 % | +12.5 |" in out and "B gains most: a 62.5 → 100.0" in out
    assert "B loses most: b 87.5 → 50.0" in out


def test_compare_refuses_in_one_line(tmp_path, capsys):
    a, b = tmp_path / "A", tmp_path / "B"
    _fold(a, 1, 0.5, [[1, 1], [1, 1]])
    _fold(b, 2, 0.5, [[1, 1], [1, 1]])
    with pytest.raises(Sp4scError, match="none in common"):
        compare(a, b)
    assert main(["cv", "compare", str(a), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such folder" in err


def test_fold_results_reader_refuses_what_sp4sc_cv_did_not_write(tmp_path):
    from sp4sc.cvfolder import fold_results, last_checkpoint

    (tmp_path / "empty").mkdir()
    with pytest.raises(Sp4scError, match=r"empty: no fold<k>/result.json inside"):
        fold_results(tmp_path / "empty")
    _fold(tmp_path / "run", 2, 0.5, [[1, 1], [1, 1]])
    (tmp_path / "run" / "fold3").mkdir()
    (tmp_path / "run" / "fold3" / "result.json").write_text("{\"fold\": ")  # a half-written file
    with pytest.raises(Sp4scError, match=r"fold3/result.json: not an `sp4sc cv` fold result .*rerun that fold"):
        fold_results(tmp_path / "run")
    (tmp_path / "run" / "fold3" / "result.json").unlink()
    assert list(fold_results(tmp_path / "run")) == [2]
    assert last_checkpoint(tmp_path / "run", 2) == tmp_path / "run" / "fold2" / "checkpoints" / "last.ckpt"
