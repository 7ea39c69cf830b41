"""``sp4sc cv gap RUN``: how well each fold's model fits its own training clips, beside its validation score.

    sp4sc cv gap runs/cv/esc50_sp4sc
    sp4sc cv gap runs/cv/esc50_sp4sc runs/cv/esc50_sp4sc_kd --clips 400 --json

For every finished fold of an ``sp4sc cv --out`` folder (``fold<k>/result.json`` and
``fold<k>/checkpoints/last.ckpt``, the checkpoint the fold's result was scored with), the
model is run without any augmentation (no mixup, no SpecAugment, float32, eval mode) on the
fold's training clips and on its validation clips, read from the same feature cache as in
training. The table gives training-clip accuracy and log loss, validation accuracy and log
loss, and the gap between them. A model that fits its training clips far better than it
generalises is over-fitting (regularisation, distillation and more data are the levers); one
that fits them little better than the validation clips is under-fitting (capacity and longer
schedules are). The validation figures are recomputed, and must equal ``result.json``'s: a
mismatch is reported, since it would mean the checkpoint or the features are not the ones
scored.

The data settings come from the checkpoint (``datamodule_hyper_parameters``); ``--data.root``
replaces a dataset root that moved, and ``--clips N`` scores N training clips per fold drawn at
random (seed 0) instead of all of them.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from sp4sc.commands.cv_compare import mean_std, plus_minus
from sp4sc.cvfolder import fold_results, last_checkpoint
from sp4sc.errors import Sp4scError


def _folds(run: Path) -> list[tuple[Path, dict[str, Any]]]:
    """``(last.ckpt, result)`` of each finished fold, in fold order."""
    found = []
    for fold, result in sorted(fold_results(run).items()):
        ckpt = last_checkpoint(run, fold)
        if not ckpt.is_file():
            raise Sp4scError(f"{ckpt}: missing; the fold's result was scored with it, so the gap cannot be measured "
                             "(rerun the fold with `sp4sc cv`)")
        found.append((ckpt, result))
    return found


def _datamodule(ckpt: Path, contents: dict[str, Any], data_root: str | None):
    from sp4sc.data.datamodule import SceneDataModule

    hparams = contents.get("datamodule_hyper_parameters")
    if not isinstance(hparams, dict):
        raise Sp4scError(f"{ckpt}: has no data settings (datamodule_hyper_parameters); not an `sp4sc fit` checkpoint")
    hparams = {k: v for k, v in hparams.items() if not k.startswith("_")}
    if data_root is not None:
        hparams["root"] = data_root
    root = hparams.get("root")
    if hparams.get("dataset") != "toy" and root is not None and not Path(root).expanduser().is_dir():
        raise Sp4scError(f"{ckpt}: its dataset root {root} is not a folder here; pass --data.root with where it is now")
    hparams["progress"] = False
    return SceneDataModule(**hparams)


def _score(model, split, indices: list[int], batch: int = 16) -> dict[str, float]:
    # batch 16: at 64, SP4SC's ESC-50 activations (~0.5 GB a tensor) page-faulted on every batch, 3x slower
    import torch
    import torch.nn.functional as F

    correct, nll = 0, 0.0
    with torch.inference_mode():
        for start in range(0, len(indices), batch):
            rows = indices[start:start + batch]
            x = torch.stack([split[i]["x"] for i in rows])  # (batch, 1, frames, mels)
            y = split.labels[rows]
            logits = model(x).float()
            correct += int((logits.argmax(1) == y).sum())
            nll += float(F.cross_entropy(logits, y, reduction="sum"))
    return {"clips": len(indices), "accuracy": correct / len(indices), "logloss": nll / len(indices)}


def fold_gap(ckpt: Path, result: dict[str, Any], data_root: str | None = None,
             clips: int | None = None) -> dict[str, Any]:
    """Training-clip and validation scores of one fold's checkpoint, without augmentation."""
    import torch

    from sp4sc.cpu import cores, keep_freed_memory
    from sp4sc.models.checkpoint import load_model, read_checkpoint

    keep_freed_memory()  # large activations freed and allocated per batch: no mmap + page faults each time
    threads = torch.get_num_threads()
    torch.set_num_threads(cores())
    try:
        contents = read_checkpoint(ckpt)  # read once: the model and the data settings both come from it
        model = load_model(ckpt, contents).model.float().eval()
        dm = _datamodule(ckpt, contents, data_root)
        dm.setup()
        train, val = dm.split("train"), dm.split("val")
        order = list(range(len(train)))
        if clips is not None and clips < len(train):
            pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:clips]
            order = sorted(pick.tolist())
        fit = _score(model, train, order)
        held = _score(model, val, list(range(len(val))))
    finally:
        torch.set_num_threads(threads)
    matches = (abs(held["accuracy"] - float(result["accuracy"])) < 0.5 / len(val)
               and math.isclose(held["logloss"], float(result["logloss"]), rel_tol=1e-3, abs_tol=1e-4))
    return {"fold": int(result["fold"]), "train": fit, "val": held,
            "gap": fit["accuracy"] - held["accuracy"], "val_matches_result": matches,
            "result": {"accuracy": result["accuracy"], "logloss": result["logloss"]}}


def gap(run: str | Path, data_root: str | None = None, clips: int | None = None) -> dict[str, Any]:
    """:func:`fold_gap` for every finished fold of an ``sp4sc cv`` folder, with the mean +/- std."""
    rows = [fold_gap(ckpt, result, data_root, clips) for ckpt, result in _folds(Path(run))]
    columns = {"train_accuracy": [r["train"]["accuracy"] for r in rows],
               "train_logloss": [r["train"]["logloss"] for r in rows],
               "val_accuracy": [r["val"]["accuracy"] for r in rows],
               "val_logloss": [r["val"]["logloss"] for r in rows],
               "gap": [r["gap"] for r in rows]}
    summary = {key: mean_std(values) for key, values in columns.items()}
    return {"run": str(run), "per_fold": rows, "mean": {k: v[0] for k, v in summary.items()},
            "std": {k: v[1] for k, v in summary.items()}}


def text(report: dict[str, Any]) -> str:
    """One run's gap as a Markdown table per fold and the mean +/- std."""
    m, s = report["mean"], report["std"]

    def pm(key: str, scale: float, fmt: str) -> str:
        return plus_minus(m[key], s[key], fmt, scale)

    lines = [f"{report['run']} (no augmentation, float32, each fold's last checkpoint)", "",
             "| fold | training clips | train accuracy | train log loss | val accuracy | val log loss | "
             "gap (points) |", "|---|---:|---|---|---|---|---|"]
    for r in report["per_fold"]:
        flag = "" if r["val_matches_result"] else f" (result.json: {100 * r['result']['accuracy']:.2f} %)"
        lines.append(f"| {r['fold']} | {r['train']['clips']} | {100 * r['train']['accuracy']:.2f} % | "
                     f"{r['train']['logloss']:.3f} | {100 * r['val']['accuracy']:.2f} %{flag} | "
                     f"{r['val']['logloss']:.3f} | {100 * r['gap']:+.2f} |")
    lines.append(f"| mean | | {pm('train_accuracy', 100, '{:.1f}')} % | {pm('train_logloss', 1, '{:.3f}')} | "
                 f"{pm('val_accuracy', 100, '{:.1f}')} % | {pm('val_logloss', 1, '{:.3f}')} | "
                 f"{pm('gap', 100, '{:+.1f}')} |")
    bad = [r["fold"] for r in report["per_fold"] if not r["val_matches_result"]]
    if bad:
        lines.append(f"\nWarning: fold(s) {' '.join(map(str, bad))}: the recomputed validation score differs from "
                     "result.json; the checkpoint or the features are not the ones that fold was scored with.")
    return "\n".join(lines)


def main_argv(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sp4sc cv gap",
                                     description="training-clip against validation accuracy of each fold of "
                                                 "`sp4sc cv` folders (no augmentation): over- or under-fitting")
    parser.add_argument("runs", nargs="+", help="`sp4sc cv --out` folders")
    parser.add_argument("--data.root", dest="data_root", default=None,
                        help="the dataset root, where it differs from the one stored in the checkpoints")
    parser.add_argument("--clips", type=int, default=None,
                        help="training clips scored per fold, drawn at random with seed 0 (default: all)")
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    args = parser.parse_args(argv)
    if args.clips is not None and args.clips < 1:
        raise Sp4scError("--clips: must be at least 1")
    reports = [gap(run, args.data_root, args.clips) for run in args.runs]
    print(json.dumps(reports, indent=2) if args.json else "\n\n".join(text(r) for r in reports))
    return 0
