"""``sp4sc cv``: k-fold cross-validation of a recipe as one resumable command.

    sp4sc cv --config recipes/esc10_sp4sc.yaml --data.root ../shared/data/esc10 --out runs/cv/esc10_sp4sc
    sp4sc cv --config recipes/esc10_cnn6.yaml --data.root PATH --folds 1 2 --trainer.max_epochs 50
    sp4sc cv compare runs/cv/esc50_sp4sc runs/cv/esc50_sp4sc_kd   # paired, per fold and per class
    sp4sc cv gap runs/cv/esc50_sp4sc                              # training-clip vs validation accuracy

One ``sp4sc fit`` per fold, each in ``<out>/fold<k>/`` (``--data.fold k``,
``--trainer.default_root_dir <out>/fold<k>``); any other ``--key value`` is
passed to every fold's fit. Resumable: a fold with ``result.json`` is skipped,
a fold with ``checkpoints/last.ckpt`` but no result resumes from it
(``--ckpt_path last``). Each fold's result is the validation of its LAST
checkpoint (the end of training, not the best epoch: the validation fold is
the test fold here, so picking the best epoch on it would flatter the score).
Then ``cv.json`` (per fold and mean +/- std of accuracy, class-averaged
accuracy, log loss, epochs, wall time; one fold has no std: ``null``), ``cv.md`` (the same, and the 10 most
frequent confusions), ``cv.png`` (per-fold accuracy and, up to 20 classes, the
confusion matrix summed over the folds) and ``confusion.png`` (the summed counts
and their row-normalised rates, laid out for the class count) with
``metrics.md`` (the pooled clips of all folds: accuracy overall and per class,
log loss, the most frequent confusions).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Optional

from sp4sc.errors import Sp4scError
from sp4sc.commands.cv_compare import main_argv as compare_main, mean_std
from sp4sc.cvfolder import RESULT, WALL, fold_dir as cv_fold_dir, last_checkpoint

ESC_FOLDS = (1, 2, 3, 4, 5)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the recipe (e.g. recipes/esc10_sp4sc.yaml)")
    parser.add_argument("--data.root", dest="data_root", required=True,
                        help="the dataset's root folder (for ESC-10/ESC-50: the folder holding meta/ and audio/)")
    parser.add_argument("--folds", type=int, nargs="+", default=list(ESC_FOLDS),
                        help="folds to run, each the validation fold of one fit (default: 1 2 3 4 5)")
    parser.add_argument("--out", default=None,
                        help="output folder (default: runs/cv/<recipe name>); one fold<k>/ per fold inside")
    parser.epilog = ("Any other --key value (e.g. --trainer.max_epochs 50, --model.lr 3e-3) is passed to "
                     "every fold's `sp4sc fit`. `sp4sc cv compare A B` compares two --out folders fold by fold "
                     "(paired mean difference +/- std) and class by class; `sp4sc cv gap A` scores each fold's model "
                     "on its own training clips beside its validation clips (over- or under-fitting).")


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Split ``argv`` into cv's own options and the overrides passed to each fold's fit."""
    parser = argparse.ArgumentParser(prog="sp4sc cv")
    add_arguments(parser)
    args, rest = parser.parse_known_args(argv)
    return args, rest


def _check_overrides(rest: list[str]) -> None:
    for i, arg in enumerate(rest):
        if arg.startswith("--data.fold") or arg.startswith("--trainer.default_root_dir") or arg.startswith(
                "--ckpt_path"):
            raise Sp4scError(f"sp4sc cv: {arg.split('=')[0]} is set by cv per fold; use --folds and --out instead")
        if not arg.startswith("--") and (i == 0 or not rest[i - 1].startswith("--")):
            raise Sp4scError(f"sp4sc cv: unexpected argument {arg!r}; overrides are --key value pairs "
                             "(e.g. --trainer.max_epochs 50)")


def project_root() -> Path | None:
    """The sp4sc checkout this package runs from (the folder with ``pyproject.toml`` and ``recipes/``), if any."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "recipes").is_dir() else None


def recipe_label(path: str) -> str:
    """How ``cv.md`` and ``cv.json`` name a recipe: relative to the project root when it lies inside it.

    ``/home/me/sp4sc/recipes/esc10_sp4sc.yaml`` -> ``recipes/esc10_sp4sc.yaml``; a recipe
    elsewhere is named relative to the working folder when inside it, else by its absolute path.
    """
    full = Path(path).resolve()
    for base in (project_root(), Path.cwd().resolve()):
        if base is not None and full.is_relative_to(base):
            return full.relative_to(base).as_posix()
    return str(full)


def _fold_args(args: argparse.Namespace, rest: list[str], fold: int, fold_dir: Path) -> list[str]:
    return ["--config", args.config, "--data.root", args.data_root, *rest, "--data.fold", str(fold),
            "--trainer.default_root_dir", str(fold_dir)]


def _epochs_of(ckpt: Path) -> int:
    import torch

    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    return int(state.get("epoch", -1)) + 1


def run_fold(args: argparse.Namespace, rest: list[str], fold: int, out: Path) -> dict[str, Any]:
    """Train (or resume) one fold, validate its last checkpoint, write ``result.json``; return the result."""
    from sp4sc.commands.lightning import _make_cli, expand_configs
    from sp4sc.fileio import write_json
    from sp4sc.log import logger

    fold_dir = cv_fold_dir(out, fold)
    result_path = fold_dir / RESULT
    if result_path.is_file():
        logger.info("fold %d: done before (%s), skipped", fold, result_path)
        return json.loads(result_path.read_text(encoding="utf-8"))
    fold_args = _fold_args(args, rest, fold, fold_dir)
    last = last_checkpoint(out, fold)
    resumed = last.is_file()
    logger.info("fold %d: %s in %s", fold, f"resuming from {last}" if resumed else "training", fold_dir)
    fit_args = fold_args + (["--trainer.callbacks+=sp4sc.training.progress.WallClock"]
                            + (["--ckpt_path", "last"] if resumed else []))
    _make_cli(expand_configs(fit_args), "fit")
    wall_path = fold_dir / WALL
    wall = json.loads(wall_path.read_text())["wall_s"] if wall_path.is_file() else float("nan")
    if not last.is_file():
        raise Sp4scError(f"fold {fold}: training wrote no {last}; keep the recipe's ModelCheckpoint(save_last=true)")
    # the fold's score: its last checkpoint on its validation fold
    cli = _make_cli(expand_configs(fold_args + ["--ckpt_path", str(last)]), "validate")
    report = cli.model.reports.get("val")
    if not report:
        raise Sp4scError(f"fold {fold}: validation of {last} gave no report")
    overall = report["overall"]
    result = {
        "fold": fold,
        "accuracy": overall.get("micro_accuracy"),
        "class_avg_accuracy": overall["accuracy"],
        "logloss": overall["logloss"],
        "epochs": _epochs_of(last),
        "wall_s": round(wall, 1),
        "resumed": resumed,
        "classes": list(cli.model.classes or []),
        "confusion": report.get("confusion"),
        "checkpoint": str(last),
    }
    write_json(result_path, result)
    return result


def folds_text(n: int) -> str:
    """``"1 fold"``, ``"2 folds"``."""
    return f"{n} fold" if n == 1 else f"{n} folds"


def _pm(mean: float, std: float | None, fmt: str = "{:.3f}", scale: float = 1.0, unit: str = "") -> str:
    """``mean +/- std`` (``mean`` alone when there is no std)."""
    text = fmt.format(scale * mean)
    return text + ("" if std is None else " +/- " + fmt.format(scale * std)) + unit


METRICS = ("accuracy", "class_avg_accuracy", "logloss", "epochs", "wall_s")


def summarise(results: list[dict[str, Any]], recipe: str, command: str,
              planned: Optional[list[int]] = None) -> dict[str, Any]:
    """Per fold and mean +/- std (sample std) of every metric, and the confusion matrix summed over folds.

    With one fold the std of every metric is None (``null`` in ``cv.json``): one fold has no spread.

    ``planned``: every fold the run will do; while some are still to come the summary says
    ``"complete": false`` and lists them in ``"folds_to_do"``.
    """
    from sp4sc.machine import line

    done = [r["fold"] for r in results]
    to_do = [f for f in (planned or done) if f not in done]
    summary: dict[str, Any] = {"recipe": recipe, "command": command, "machine": line(),
                               "complete": not to_do, "folds_to_do": to_do,
                               "folds": [{k: r[k] for k in ("fold", *METRICS)} for r in results]}
    for key in METRICS:
        mean, std = mean_std([float(r[key]) for r in results])
        summary.setdefault("mean", {})[key] = mean
        summary.setdefault("std", {})[key] = std
    confusions = [r.get("confusion") for r in results]
    if all(confusions):
        n = len(confusions[0])
        summary["confusion"] = [[sum(c[i][j] for c in confusions) for j in range(n)] for i in range(n)]
        summary["classes"] = results[0].get("classes")
    return summary


def pooled_results(results: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    """All folds' validation clips pooled, in the :func:`sp4sc.metrics.dcase_results` layout.

    Class-wise accuracy comes from the summed confusion matrix; the log loss is the clip mean
    over all folds (each fold's mean weighted by its clip count); no per-class log loss.
    """
    cm = summary["confusion"]
    classes = summary.get("classes") or [str(i) for i in range(len(cm))]
    rows = [sum(r) for r in cm]
    class_acc = {c: (cm[i][i] / rows[i] if rows[i] else None) for i, c in enumerate(classes)}
    counts = [sum(map(sum, r["confusion"])) for r in results]
    known = [a for a in class_acc.values() if a is not None]
    return {
        "overall": {"accuracy": sum(known) / len(known) if known else None,
                    "micro_accuracy": sum(cm[i][i] for i in range(len(cm))) / max(1, sum(rows)),
                    "logloss": sum(r["logloss"] * n for r, n in zip(results, counts)) / max(1, sum(counts))},
        "class_wise": {c: {"accuracy": a, "logloss": None} for c, a in class_acc.items()},
        "device_wise": {},
        "confusion": cm,
    }


def markdown(summary: dict[str, Any]) -> str:
    """``cv.md``: one row per fold, then mean +/- std (with 2 folds or more), then the top confusions."""
    to_do = summary.get("folds_to_do") or []
    done = len(summary["folds"])
    title = f"# Cross-validation of `{summary['recipe']}`" + (
        f" ({done} of {done + len(to_do)} folds done; still to do: {', '.join(map(str, to_do))})" if to_do else "")
    lines = [title, "",
             "| fold | accuracy | class-avg accuracy | log loss | epochs | wall time (s) |",
             "|---|---|---|---|---|---|"]
    for r in summary["folds"]:
        lines.append(f"| {r['fold']} | {100 * r['accuracy']:.1f} % | {100 * r['class_avg_accuracy']:.1f} % | "
                     f"{r['logloss']:.3f} | {r['epochs']} | {r['wall_s']:.0f} |")
    m, s = summary["mean"], summary["std"]
    if done > 1:
        lines.append(f"| mean +/- std ({folds_text(done)}) | {_pm(m['accuracy'], s['accuracy'], '{:.1f}', 100, ' %')} | "
                     f"{_pm(m['class_avg_accuracy'], s['class_avg_accuracy'], '{:.1f}', 100, ' %')} | "
                     f"{_pm(m['logloss'], s['logloss'])} | {m['epochs']:.0f} | "
                     f"{sum(r['wall_s'] for r in summary['folds']):.0f} (total) |")
    else:
        lines += ["", "1 fold: no mean or spread over folds (run more with --folds for a mean and a standard deviation)."]
    if summary.get("confusion"):
        from sp4sc.training.report import top_confusions_md

        cm = summary["confusion"]
        lines += ["", *top_confusions_md(cm, summary.get("classes") or [str(i) for i in range(len(cm))]),
                  ("Summed over the folds. " if len(summary["folds"]) > 1 else "")
                  + "The whole matrix: confusion.png; per class: metrics.md."]
    lines += ["", f"Command: `{summary['command']}`", "", summary["machine"], ""]
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> None:
    """``cv.png``: per-fold accuracy (bars, mean line) and, up to 20 classes, the summed confusion matrix.

    Past :data:`sp4sc.metrics.ANNOTATE_MAX` classes the matrix would not be readable beside the
    bars: the figure says where it is instead (``confusion.png``, and the most frequent
    confusions in ``cv.md``).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import numpy as np
    from matplotlib.figure import Figure

    from sp4sc.fileio import atomic_path
    from sp4sc.metrics import ANNOTATE_MAX, confusion_layout, draw_matrix

    folds = summary["folds"]
    cm = np.asarray(summary["confusion"], dtype=float) if summary.get("confusion") else None
    classes = (summary.get("classes") or [str(i) for i in range(len(cm))]) if cm is not None else []
    show_cm = cm is not None and len(classes) <= ANNOTATE_MAX
    bars_w = max(4.0, 1.2 + 0.5 * len(folds))
    if show_cm:
        layout = confusion_layout(len(classes), max(len(str(c)) for c in classes), panels=1)
        fig = Figure(figsize=(bars_w + layout.figsize[0], max(5.0, layout.figsize[1])), dpi=layout.dpi)
        axes = fig.subplots(1, 2, gridspec_kw={"width_ratios": [bars_w, layout.figsize[0]]})
    else:
        fig = Figure(figsize=(max(5.5, bars_w), 5.6), dpi=110)
        axes = [fig.subplots(1, 1)]
    ax = axes[0]
    acc = [100 * r["accuracy"] for r in folds]
    ax.bar([str(r["fold"]) for r in folds], acc, color="tab:blue", width=0.6)
    ax.set_xlim(-0.8, len(folds) - 0.2)
    ax.axhline(100 * summary["mean"]["accuracy"], color="k", ls="--", lw=1,
               label=(f"mean {_pm(summary['mean']['accuracy'], summary['std']['accuracy'], '{:.1f}', 100, ' %')}"
                      if len(folds) > 1 else f"fold {folds[0]['fold']}: {100 * folds[0]['accuracy']:.1f} %"))
    ax.set_xlabel("validation fold")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(loc="lower right")
    ax.set_title("per-fold accuracy")
    if show_cm:
        where = "summed over folds" if len(folds) > 1 else f"fold {folds[0]['fold']}"
        draw_matrix(fig, axes[1], cm, cm, classes, layout, f"confusion, {where} (clip counts)", rates=False)
    if cm is not None and not show_cm:
        fig.tight_layout(rect=(0, 0.09, 1, 1))
        fig.text(0.5, 0.015, f"{len(classes)} classes: the confusion matrix is in confusion.png,\n"
                 "the most frequent confusions in cv.md", ha="center", va="bottom", fontsize=9)
    else:
        fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi)


def run_cv(argv: list[str]) -> dict[str, Any]:
    """Run (or resume) every fold, writing the summaries after each; return the final summary."""
    args, rest = parse(argv)
    _check_overrides(rest)
    if not Path(args.config).is_file():
        raise Sp4scError(f"--config {args.config}: no such file; recipes live in recipes/")
    if not Path(args.data_root).is_dir():
        raise Sp4scError(f"--data.root {args.data_root}: no such folder; give the dataset's root folder")
    folds = list(dict.fromkeys(args.folds))
    if any(f < 1 for f in folds):
        raise Sp4scError(f"--folds {args.folds}: folds are numbered from 1")
    out = Path(args.out) if args.out else Path("runs") / "cv" / Path(args.config).stem
    recipe = recipe_label(args.config)
    shown = [recipe if i and argv[i - 1] == "--config" and a == args.config
             else f"--config={recipe}" if a == f"--config={args.config}" else a for i, a in enumerate(argv)]
    command = "sp4sc cv " + " ".join(shlex.quote(a) for a in shown)
    results: list[dict[str, Any]] = []
    for fold in folds:
        results.append(run_fold(args, rest, fold, out))
        summary = write_summaries(out, results, recipe, command, folds)
        if not summary["complete"]:  # a long run shows where it stands after every fold
            from sp4sc.log import logger

            m = summary["mean"]
            so_far = f", mean so far {100 * m['accuracy']:.1f} %" if len(results) > 1 else ""
            logger.info(f"fold {fold}: accuracy {100 * results[-1]['accuracy']:.1f} %, log loss "
                        f"{results[-1]['logloss']:.3f}; {len(results)} of {folds_text(len(folds))} done{so_far}; "
                        f"partial summary in {out / 'cv.md'}")
    return summary | {"out": str(out)}


def write_summaries(out: Path, results: list[dict[str, Any]], recipe: str, command: str,
                    planned: list[int]) -> dict[str, Any]:
    """Write cv.json, cv.md, cv.png (and the pooled confusion figure and metrics) for the folds done so far."""
    from sp4sc.fileio import write_json, write_text

    summary = summarise(results, recipe, command, planned)
    write_json(out / "cv.json", summary)
    write_text(out / "cv.md", markdown(summary))
    plot(summary, out / "cv.png")
    if summary.get("confusion"):
        from sp4sc.training.report import write_confusion_png, write_metrics_md

        title = f"{Path(recipe).stem}: " + ("1 fold" if len(results) == 1 else f"{len(results)} folds summed")
        write_confusion_png(summary["confusion"], summary.get("classes") or [], out / "confusion.png", title=title)
        write_metrics_md(pooled_results(results, summary), out / "metrics.md", title=title,
                         classes=summary.get("classes"))
    return summary


def main_argv(argv: list[str]) -> int:
    if argv[:1] == ["compare"]:  # sp4sc cv compare A B: a paired comparison of two cross-validations
        return compare_main(argv[1:])
    if argv[:1] == ["gap"]:  # sp4sc cv gap RUN: training-clip against validation accuracy per fold
        from sp4sc.commands.cv_gap import main_argv as gap_main

        return gap_main(argv[1:])
    summary = run_cv(argv)
    m, s = summary["mean"], summary["std"]
    print(f"{folds_text(len(summary['folds']))}: accuracy {_pm(m['accuracy'], s['accuracy'], '{:.1f}', 100, ' %')}, "
          f"log loss {_pm(m['logloss'], s['logloss'])}; {summary['out']}/cv.md, cv.json, cv.png, confusion.png, "
          "metrics.md", flush=True)
    return 0


def run(args: argparse.Namespace) -> int:  # pragma: no cover - the CLI calls main_argv with the raw argv
    raise Sp4scError("sp4sc cv: internal error (run through sp4sc.cli)")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main_argv(sys.argv[1:]))
