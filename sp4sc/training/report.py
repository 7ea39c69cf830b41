"""Figures and tables of one evaluation, written into a run folder: ``confusion.png`` and ``metrics.md``.

Functions with plain arguments, so any command can call them (``sp4sc demo``,
``sp4sc test`` / ``validate``, a cross-validation driver per fold and overall):

    write_confusion_png(counts, classes, "runs/x/confusion.png")
    write_metrics_md(results, "runs/x/metrics.md", title="test split")

``counts`` is a confusion matrix of clip counts, rows the true class and columns
the predicted one (``SceneMetrics.compute()["confusion"]``, or
``SceneClassifier.reports[stage]["confusion"]``). ``results`` is the layout of
:func:`sp4sc.metrics.dcase_results`: ``{"overall": {"accuracy", "logloss", ...},
"class_wise": {scene: {...}}, "device_wise": {device: {...}}}`` with accuracies
as fractions in [0, 1]; with its ``"confusion"`` entry, ``metrics.md`` ends with the
10 most frequent confusions (:func:`top_confusions`). The figure follows the class
count (:func:`sp4sc.metrics.confusion_layout`): numbers in the cells up to 20
classes, a readable matrix without them past that. Both files are written atomically (a temporary file
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
from sp4sc.metrics import ANNOTATE_MAX, confusion_layout, draw_matrix

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


def eval_confusion_figure(counts: Any, classes: Sequence[str], title: str | None = None):
    """The matplotlib ``Figure`` of :func:`confusion_png_bytes` (laid out by :func:`~sp4sc.metrics.confusion_layout`)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # a Figure without pyplot: no global state, nothing to close

    cm = _counts(counts, classes)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    layout = confusion_layout(len(classes), max((len(str(c)) for c in classes), default=1))
    fig = Figure(figsize=layout.figsize, dpi=layout.dpi)
    axes = fig.subplots(1, layout.panels, squeeze=False)[0]
    rate_title = "rows normalised (recall on the diagonal)"
    if layout.panels == 2:
        draw_matrix(fig, axes[0], cm, cm, classes, layout, f"clip counts ({int(cm.sum()):,} clips)", rates=False)
    else:
        rate_title += f", {int(cm.sum()):,} clips; no numbers past {ANNOTATE_MAX} classes"
    draw_matrix(fig, axes[-1], norm, cm, classes, layout, rate_title, rates=True)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def confusion_png_bytes(counts: Any, classes: Sequence[str], title: str | None = None) -> bytes:
    """PNG bytes of the confusion figure.

    Up to :data:`ANNOTATE_MAX` classes two panels side by side, clip counts and rows normalised
    to 1 (per-class recall on the diagonal), each cell with its number; past it one panel of the
    rows normalised, without numbers, sized by :func:`~sp4sc.metrics.confusion_layout` (the most frequent
    confusions are listed in ``metrics.md``, :func:`top_confusions`).
    """
    fig = eval_confusion_figure(counts, classes, title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return buf.getvalue()


def top_confusions(counts: Any, classes: Sequence[str], k: int = 10) -> list[dict[str, Any]]:
    """The ``k`` largest off-diagonal cells: which true class is most often taken for which.

    Returns:
        Up to ``k`` dicts ``{"true", "predicted", "count", "share"}`` (``share``: the count over
        the true class's clips), largest count first; ties by share, then by class order.
        Cells with no clips are left out.
    """
    cm = _counts(counts, classes)
    rows = cm.sum(axis=1)
    cells = [(cm[i, j], cm[i, j] / rows[i], i, j) for i in range(len(classes)) for j in range(len(classes))
             if i != j and cm[i, j] > 0]
    cells.sort(key=lambda c: (-c[0], -c[1], c[2], c[3]))
    return [{"true": str(classes[i]), "predicted": str(classes[j]),
             "count": int(c) if float(c).is_integer() else float(c), "share": float(s)}
            for c, s, i, j in cells[:k]]


def top_confusions_md(counts: Any, classes: Sequence[str], k: int = 10) -> list[str]:
    """Markdown lines of :func:`top_confusions`: a heading and a table (or a line saying there are none)."""
    top = top_confusions(counts, classes, k)
    errors = float(_counts(counts, classes).sum() - np.trace(_counts(counts, classes)))
    lines = ["## Most frequent confusions", ""]
    if not top:
        return lines + ["No clip was misclassified.", ""]
    clips = f"{int(errors):,} clip{'s' if int(errors) != 1 else ''} misclassified"
    pairs = "pair" if len(top) == 1 else f"{len(top)} pairs"
    lines += [f"{clips}; the most frequent (true → predicted) {pairs}, with the share of the true class's clips:",
              "",
              "| true → predicted | clips | share of the true class |", "|---|---:|---:|"]
    lines += [f"| {t['true']} → {t['predicted']} | {t['count']} | {100 * t['share']:.1f} % |" for t in top]
    return lines + [""]


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


def metrics_md_text(results: Mapping[str, Any], title: str | None = None,
                    classes: Sequence[str] | None = None) -> str:
    """Markdown tables of a :func:`sp4sc.metrics.dcase_results` dict: overall, per class, per device.

    With a ``"confusion"`` entry, the :func:`top_confusions` follow as a last table; ``classes``
    names its rows (default: the ``class_wise`` names, when there is one per row).
    """
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
    devices = " (device rows: within the device's clips)" if results.get("device_wise") else ""
    lines += ["", f"Accuracy is DCASE's class-wise average{devices}; "
              "log loss is the mean over clips of -log p(true class).", ""]
    counts = results.get("confusion")
    if counts is not None:
        names = list(classes) if classes is not None else list(results.get("class_wise") or {})
        if len(names) != len(counts):
            names = [str(i) for i in range(len(counts))]
        lines += top_confusions_md(counts, names)
    return "\n".join(lines)


def write_metrics_md(results: Mapping[str, Any], path: str | os.PathLike, title: str | None = None,
                     classes: Sequence[str] | None = None) -> Path:
    """Write ``metrics.md`` (see :func:`metrics_md_text`) atomically; returns the path."""
    from sp4sc.fileio import write_text

    write_text(path, metrics_md_text(results, title, classes))
    return Path(path)


def write_eval_report(results: Mapping[str, Any], classes: Sequence[str], folder: str | os.PathLike,
                      title: str | None = None) -> tuple[Path, Path | None]:
    """``confusion.png`` and ``metrics.md`` into ``folder`` from a report holding a ``"confusion"`` entry.

    ``results`` is :attr:`sp4sc.training.lit.SceneClassifier.reports` ``[stage]`` (or any
    :func:`sp4sc.metrics.dcase_results` dict with ``"confusion"`` added). Returns
    ``(metrics.md, confusion.png or None when there is no confusion matrix)``.
    """
    folder = Path(folder)
    md = write_metrics_md(results, folder / METRICS_MD, title, classes)
    counts = results.get("confusion")
    png = write_confusion_png(counts, classes, folder / CONFUSION_PNG, title) if counts is not None else None
    return md, png
