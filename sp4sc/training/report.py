"""Figures and tables of one evaluation, written into a run folder: ``confusion.png`` and ``metrics.md``.

Two functions with plain arguments, so any command can call them (``sp4sc demo``,
``sp4sc test`` / ``validate``, a cross-validation driver per fold and overall):

    write_confusion_png(counts, classes, "runs/x/confusion.png")
    write_metrics_md(results, "runs/x/metrics.md", title="test split")

``counts`` is a confusion matrix of clip counts, rows the true class and columns
the predicted one (``SceneMetrics.compute()["confusion"]``, or
``SceneClassifier.reports[stage]["confusion"]``). ``results`` is the layout of
:func:`sp4sc.metrics.dcase_results`: ``{"overall": {"accuracy", "logloss", ...},
"class_wise": {scene: {...}}, "device_wise": {device: {...}}}`` with accuracies
as fractions in [0, 1]. Both files are written atomically (a temporary file
beside the target, then a rename) and drawn with matplotlib's Agg backend (no
display needed).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from sp4sc.errors import Sp4scError

CONFUSION_PNG = "confusion.png"
METRICS_MD = "metrics.md"


def _counts(counts: Any, classes: Sequence[str]) -> np.ndarray:
    cm = np.asarray(counts, dtype=np.float64)
    n = len(classes)
    if cm.shape != (n, n):
        raise Sp4scError(f"confusion matrix: shape {cm.shape}, expected ({n}, {n}) for {n} classes")
    if not np.isfinite(cm).all() or (cm < 0).any():
        raise Sp4scError("confusion matrix: counts must be finite and non-negative")
    return cm


def confusion_png_bytes(counts: Any, classes: Sequence[str], title: str | None = None) -> bytes:
    """PNG bytes of a two-panel figure: clip counts, and rows normalised to 1 (per-class recall on the diagonal)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # a Figure without pyplot: no global state, nothing to close

    cm = _counts(counts, classes)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(classes)
    side = max(4.0, 0.45 * n + 2.0)
    fig = Figure(figsize=(2 * side + 1.0, side + 0.6))
    axes = fig.subplots(1, 2)
    panels = (
        (axes[0], cm, f"clip counts ({int(cm.sum()):,} clips)", None),
        (axes[1], norm, "rows normalised (recall on the diagonal)", 1.0),
    )
    for ax, values, panel_title, vmax in panels:
        img = ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax if vmax is not None else max(1.0, values.max()))
        ax.set_xticks(range(n), labels=list(classes), rotation=90, fontsize=7)
        ax.set_yticks(range(n), labels=list(classes), fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(panel_title, fontsize=9)
        fig.colorbar(img, ax=ax, fraction=0.046, pad=0.04)
        if n <= 20:
            top = values.max() if values.max() > 0 else 1.0
            for i in range(n):
                for j in range(n):
                    if cm[i, j]:
                        text = f"{int(cm[i, j])}" if vmax is None else f"{values[i, j]:.2f}"
                        ax.text(j, i, text, ha="center", va="center", fontsize=6,
                                color="white" if values[i, j] > 0.5 * top else "black")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def write_confusion_png(counts: Any, classes: Sequence[str], path: str | os.PathLike, title: str | None = None) -> Path:
    """Write ``confusion.png`` (see :func:`confusion_png_bytes`) atomically; returns the path.

    Args:
        counts: ``(classes, classes)`` clip counts, rows true, columns predicted.
        classes: class names in the matrix's order.
        path: the PNG file to write (its folder is created).
        title: an optional title above both panels.
    """
    from sp4sc.fileio import write_bytes

    write_bytes(path, confusion_png_bytes(counts, classes, title))
    return Path(path)


def _pct(block: Mapping[str, Any] | None, key: str = "accuracy") -> str:
    v = (block or {}).get(key)
    return "" if v is None else f"{100.0 * float(v):.1f}"


def _num(block: Mapping[str, Any] | None, key: str = "logloss") -> str:
    v = (block or {}).get(key)
    return "" if v is None else f"{float(v):.3f}"


def metrics_md_text(results: Mapping[str, Any], title: str | None = None) -> str:
    """Markdown tables of a :func:`sp4sc.metrics.dcase_results` dict: overall, per class, per device."""
    if not isinstance(results, Mapping) or not isinstance(results.get("overall"), Mapping):
        raise Sp4scError("metrics: expected the dcase_results layout {'overall': {...}, 'class_wise': ..., 'device_wise': ...}")
    o = results["overall"]
    lines = [f"# {title}" if title else "# metrics", ""]
    lines += ["| metric | value |", "|---|---:|",
              f"| accuracy, class-averaged (DCASE) | {_pct(o)} % |"]
    if o.get("micro_accuracy") is not None:
        lines.append(f"| accuracy, all clips | {_pct(o, 'micro_accuracy')} % |")
    lines.append(f"| log loss | {_num(o)} |")
    for block, header in (("class_wise", "class"), ("device_wise", "device")):
        rows = results.get(block) or {}
        if not rows:
            continue
        lines += ["", f"| {header} | accuracy (%) | log loss |", "|---|---:|---:|"]
        lines += [f"| {name} | {_pct(r)} | {_num(r)} |" for name, r in rows.items()]
    lines += ["", "Accuracy is DCASE's class-wise average (device rows: within the device's clips); "
              "log loss is the mean over clips of -log p(true class).", ""]
    return "\n".join(lines)


def write_metrics_md(results: Mapping[str, Any], path: str | os.PathLike, title: str | None = None) -> Path:
    """Write ``metrics.md`` (see :func:`metrics_md_text`) atomically; returns the path."""
    from sp4sc.fileio import write_text

    write_text(path, metrics_md_text(results, title))
    return Path(path)


def write_eval_report(results: Mapping[str, Any], classes: Sequence[str], folder: str | os.PathLike,
                      title: str | None = None) -> tuple[Path, Path | None]:
    """``confusion.png`` and ``metrics.md`` into ``folder`` from a report holding a ``"confusion"`` entry.

    ``results`` is :attr:`sp4sc.training.lit.SceneClassifier.reports` ``[stage]`` (or any
    :func:`sp4sc.metrics.dcase_results` dict with ``"confusion"`` added). Returns
    ``(metrics.md, confusion.png or None when there is no confusion matrix)``.
    """
    folder = Path(folder)
    md = write_metrics_md(results, folder / METRICS_MD, title)
    counts = results.get("confusion")
    png = write_confusion_png(counts, classes, folder / CONFUSION_PNG, title) if counts is not None else None
    return md, png
