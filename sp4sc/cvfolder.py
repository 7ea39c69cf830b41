"""The folder ``sp4sc cv --out`` writes, one fit per fold, and the one reader of its results.

    <out>/fold<k>/result.json             the fold's score: its last checkpoint on its validation fold
    <out>/fold<k>/wall.json               its training wall time (sp4sc.training.progress.WallClock)
    <out>/fold<k>/checkpoints/last.ckpt   the checkpoint that was scored (and that a killed fold resumes from)

``sp4sc cv`` writes it; ``sp4sc cv compare``, ``sp4sc cv gap`` and a fine-tuned teacher
(``--model.kd_teacher.finetuned``) read it through :func:`fold_results`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sp4sc.errors import Sp4scError

RESULT = "result.json"
WALL = "wall.json"
CHECKPOINTS = "checkpoints"  # also the fit's checkpoint folder under --trainer.default_root_dir
LAST = "last.ckpt"


def fold_dir(out: str | os.PathLike, fold: int) -> Path:
    """``<out>/fold<k>``: where fold ``k``'s fit, checkpoints and result live."""
    return Path(out) / f"fold{fold}"


def last_checkpoint(out: str | os.PathLike, fold: int) -> Path:
    """``<out>/fold<k>/checkpoints/last.ckpt``."""
    return fold_dir(out, fold) / CHECKPOINTS / LAST


def fold_results(folder: str | os.PathLike) -> dict[int, dict[str, Any]]:
    """Each finished fold's ``result.json`` of an ``sp4sc cv --out`` folder, by fold number.

    One-line errors for a missing folder, a folder without any result, and a result that does not parse.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise Sp4scError(f"{folder}: no such folder; give an `sp4sc cv --out` folder")
    out = {}
    for path in sorted(folder.glob(f"fold*/{RESULT}")):
        try:
            r = json.loads(path.read_text(encoding="utf-8"))
            out[int(r["fold"])] = r
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise Sp4scError(f"{path}: not an `sp4sc cv` fold result ({exc}); delete it and rerun that fold") from None
    if not out:
        raise Sp4scError(f"{folder}: no fold<k>/{RESULT} inside; is it an `sp4sc cv --out` folder "
                         "(a fold writes it when it finishes)?")
    return out
