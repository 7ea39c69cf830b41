"""Scene-classification metrics as DCASE Task 1A reports them.

What the DCASE 2021 Task 1A baseline computes (facts read from
marmoi/dcase2021_task1a_baseline ``task1a.py::do_evaluation``; no code copied):

- overall log loss: scikit-learn ``log_loss`` over all clips, i.e. the mean over
  clips of ``-log p(true class)`` (a clip average, not a class average);
- class-wise log loss: the same over the clips of each scene;
- device-wise log loss: the same over the clips of each device;
- accuracy: sed_eval's class-wise average, i.e. the mean over scenes of each
  scene's accuracy (recall) -- the *macro* accuracy; device-wise accuracy is the
  class-wise average within the device's clips.

scikit-learn (1.5+) clips probabilities to ``[eps, 1 - eps]`` with ``eps`` the
machine epsilon of their dtype; here rows are first normalised to sum to 1
(a no-op for softmax outputs; older scikit-learn renormalised) and then clipped,
in float64 unless told otherwise. We report both the plain (micro) accuracy and
the macro accuracy; the DCASE tables use the macro one.

:class:`SceneMetrics` is a torchmetrics ``Metric`` whose states are sums of
shape ``(devices + 1, classes)`` (count, correct, summed log loss) plus a
confusion matrix, so DDP ranks sync them exactly with a sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torchmetrics import Metric

from sp4sc.errors import Sp4scError

UNKNOWN_DEVICE = "unknown"


# ----------------------------------------------------------------- functional

def _as_probs(probs: Any, eps: float | None) -> tuple[np.ndarray, float]:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise Sp4scError(f"probabilities: expected (clips, classes), got shape {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any():
        raise Sp4scError("probabilities: must be finite and non-negative")
    sums = p.sum(axis=1, keepdims=True)
    if (sums <= 0).any():
        raise Sp4scError("probabilities: a row sums to 0")
    e = float(np.finfo(np.float64).eps) if eps is None else float(eps)
    return np.clip(p / sums, e, 1.0 - e), e


def accuracy(y_true: Sequence[int], probs_or_pred: Any) -> float:
    """Fraction of clips whose argmax (or given prediction) equals the label."""
    y = np.asarray(y_true)
    pred = np.asarray(probs_or_pred)
    if pred.ndim == 2:
        pred = pred.argmax(axis=1)
    if len(y) == 0:
        raise Sp4scError("accuracy: no clips")
    return float((pred == y).mean())


def class_accuracies(y_true: Sequence[int], probs_or_pred: Any, num_classes: int) -> np.ndarray:
    """Per-class accuracy (recall); NaN for classes without clips."""
    y = np.asarray(y_true)
    pred = np.asarray(probs_or_pred)
    if pred.ndim == 2:
        pred = pred.argmax(axis=1)
    out = np.full(num_classes, np.nan)
    for c in range(num_classes):
        sel = y == c
        if sel.any():
            out[c] = float((pred[sel] == c).mean())
    return out


def macro_accuracy(y_true: Sequence[int], probs_or_pred: Any, num_classes: int | None = None) -> float:
    """Class-averaged accuracy over the classes that have clips (DCASE's "accuracy")."""
    pred = np.asarray(probs_or_pred)
    n = num_classes or (pred.shape[1] if pred.ndim == 2 else int(max(np.max(y_true), pred.max())) + 1)
    return float(np.nanmean(class_accuracies(y_true, pred, n)))


def log_loss(y_true: Sequence[int], probs: Any, eps: float | None = None) -> float:
    """Multi-class log loss: mean over clips of ``-log p(true)``, as scikit-learn computes it."""
    p, _ = _as_probs(probs, eps)
    y = np.asarray(y_true, dtype=np.int64)
    if len(y) != len(p):
        raise Sp4scError(f"log_loss: {len(y)} labels but {len(p)} probability rows")
    if len(y) == 0:
        raise Sp4scError("log_loss: no clips")
    return float(-np.log(p[np.arange(len(y)), y]).mean())


def dcase_results(
    y_true: Sequence[int],
    probs: Any,
    classes: Sequence[str],
    devices: Sequence[str | None] | None = None,
    eps: float | None = None,
) -> dict[str, Any]:
    """The DCASE development-results block: overall, class-wise and device-wise.

    Returns:
        ``{"overall": {"accuracy", "logloss"}, "class_wise": {scene: {"accuracy", "logloss"}},
        "device_wise": {device: {"accuracy", "logloss"}}}`` with the DCASE meanings
        (accuracy = class-wise average), plus ``"overall"["micro_accuracy"]``. ``device_wise``
        is empty when no clip names its device (ESC-50, a toy set, TAU's evaluation set); clips
        without a device (None or "") among named ones form an ``"unknown"`` row.
    """
    p, _ = _as_probs(probs, eps)
    y = np.asarray(y_true, dtype=np.int64)
    nc = len(classes)
    if p.shape[1] != nc:
        raise Sp4scError(f"dcase_results: {p.shape[1]} probability columns but {nc} classes")
    nll = -np.log(p[np.arange(len(y)), y])
    pred = p.argmax(axis=1)
    cw_acc = class_accuracies(y, pred, nc)
    out: dict[str, Any] = {
        "overall": {
            "accuracy": float(np.nanmean(cw_acc)),
            "micro_accuracy": float((pred == y).mean()),
            "logloss": float(nll.mean()),
        },
        "class_wise": {},
        "device_wise": {},
    }
    for c, name in enumerate(classes):
        sel = y == c
        if sel.any():
            out["class_wise"][name] = {"accuracy": float(cw_acc[c]), "logloss": float(nll[sel].mean())}
    dev = np.asarray([str(d) if d else UNKNOWN_DEVICE for d in devices]) if devices is not None else None
    if dev is not None and (dev != UNKNOWN_DEVICE).any():  # device rows only when the data names devices
        for name in dict.fromkeys(dev.tolist()):
            sel = dev == name
            out["device_wise"][name] = {
                "accuracy": float(np.nanmean(class_accuracies(y[sel], pred[sel], nc))),
                "logloss": float(nll[sel].mean()),
            }
    return out


# ------------------------------------------------------------ torchmetrics

class SceneMetrics(Metric):
    """Accumulates what DCASE reports, per device and class, DDP-synced by sums.

    ``update(logits_or_probs, target, device_index)``: ``device_index`` in
    ``[0, len(device_names))``, or -1 / None for unknown devices.

    Args:
        num_classes: number of scenes.
        device_names: names of the known devices (may be empty).
        from_logits: ``update`` receives logits (softmax taken in float64).
        eps: probability clip (default: float64 machine epsilon, as scikit-learn).
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    def __init__(self, num_classes: int, device_names: Sequence[str] = (), from_logits: bool = True,
                 eps: float | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.device_names = [str(d) for d in device_names]
        self.from_logits = from_logits
        self.eps = float(np.finfo(np.float64).eps) if eps is None else float(eps)
        shape = (len(self.device_names) + 1, self.num_classes)  # last row: unknown device
        self.add_state("count", torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("correct", torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("nll", torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("confusion", torch.zeros(self.num_classes, self.num_classes, dtype=torch.float64),
                       dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, target: torch.Tensor, device_index: torch.Tensor | None = None) -> None:
        # scores: (batch, classes); target: (batch,); device_index: (batch,)
        scores = scores.detach().to(torch.float64)
        if self.from_logits:
            p = torch.softmax(scores, dim=1)
        else:
            p = scores / scores.sum(dim=1, keepdim=True)
        p = p.clamp(self.eps, 1.0 - self.eps)
        target = target.long()
        b = target.shape[0]
        nll = -torch.log(p.gather(1, target.view(-1, 1)).view(-1))  # (batch,)
        pred = p.argmax(dim=1)
        unknown = len(self.device_names)
        if device_index is None:
            dev = torch.full((b,), unknown, dtype=torch.long, device=target.device)
        else:
            dev = device_index.long().to(target.device)
            dev = torch.where((dev < 0) | (dev >= unknown), torch.full_like(dev, unknown), dev)
        flat = dev * self.num_classes + target  # (batch,)
        size = self.count.numel()
        # out-of-place sums: states made under inference_mode (a standalone validate) stay usable
        self.count = self.count + torch.bincount(flat, minlength=size).view_as(self.count).to(torch.float64)
        self.correct = self.correct + torch.bincount(flat, weights=(pred == target).to(torch.float64),
                                       minlength=size).view_as(self.count)
        self.nll = self.nll + torch.bincount(flat, weights=nll, minlength=size).view_as(self.count)
        self.confusion = self.confusion + torch.bincount(target * self.num_classes + pred, minlength=self.num_classes ** 2
                                         ).view(self.num_classes, self.num_classes).to(torch.float64)

    def compute(self) -> dict[str, torch.Tensor]:
        """Scalars and vectors: acc, macro_acc, logloss, class_acc, class_logloss, device_acc, device_logloss."""
        count_c = self.count.sum(0)  # (classes,)
        total = count_c.sum().clamp(min=1)
        class_acc = self.correct.sum(0) / count_c  # NaN where a class has no clips
        class_ll = self.nll.sum(0) / count_c
        # device-wise: class-wise average within each device (DCASE), log loss over the device's clips
        dev_class_acc = self.correct / self.count  # (devices+1, classes), NaN where empty
        dev_count = self.count.sum(1)
        device_acc = torch.nanmean(dev_class_acc, dim=1)
        device_ll = self.nll.sum(1) / dev_count
        return {
            "acc": self.correct.sum() / total,
            "macro_acc": torch.nanmean(class_acc),
            "logloss": self.nll.sum() / total,
            "class_acc": class_acc,
            "class_logloss": class_ll,
            "device_acc": device_acc,
            "device_logloss": device_ll,
            "device_count": dev_count,
            "confusion": self.confusion.clone(),
        }

    def report(self, classes: Sequence[str]) -> dict[str, Any]:
        """:meth:`compute` as the nested dict of :func:`dcase_results` (plain floats).

        ``device_wise`` is empty when no clip came with a known device (ESC-50, a toy set):
        a single "unknown" row would only repeat the overall numbers.
        """
        r = self.compute()
        out: dict[str, Any] = {
            "overall": {"accuracy": float(r["macro_acc"]), "micro_accuracy": float(r["acc"]),
                        "logloss": float(r["logloss"])},
            "class_wise": {},
            "device_wise": {},
        }
        for c, name in enumerate(classes):
            if not torch.isnan(r["class_acc"][c]):
                out["class_wise"][name] = {"accuracy": float(r["class_acc"][c]),
                                           "logloss": float(r["class_logloss"][c])}
        # torchmetrics squeezes one-element results to 0-d: keep the per-device vectors 1-d
        count, acc, ll = (r[k].reshape(-1) for k in ("device_count", "device_acc", "device_logloss"))
        named = bool(count[:-1].sum() > 0)  # device rows only when the data names devices
        for d, name in enumerate([*self.device_names, UNKNOWN_DEVICE]):
            if named and count[d] > 0:
                out["device_wise"][name] = {"accuracy": float(acc[d]), "logloss": float(ll[d])}
        return out


ANNOTATE_MAX = 20  # past this many classes the cells carry no printed numbers
DPI = 110


@dataclass(frozen=True)
class ConfusionLayout:
    """How a confusion matrix of ``n`` classes is drawn: see :func:`confusion_layout`.

    Attributes:
        n: the class count.
        panels: 2 (clip counts, and rows normalised) up to :data:`ANNOTATE_MAX` classes; 1 (rows
            normalised only) past it, where a counts panel without its numbers repeats the rates.
        annotate: whether each non-zero cell prints its number.
        cell_in: side of one cell (inches).
        tick_fontsize: class-name size (points).
        cell_fontsize: size of the printed numbers (points; unused without ``annotate``).
        margin_in: room for the class names left of and below a matrix (inches).
        figsize: the whole figure (inches); the PNG is ``figsize * dpi`` pixels.
        dpi: resolution of the PNG.
    """

    n: int
    panels: int
    annotate: bool
    cell_in: float
    tick_fontsize: float
    cell_fontsize: float
    margin_in: float
    figsize: tuple[float, float]
    dpi: int = DPI

    @property
    def matrix_in(self) -> float:
        """Side of one matrix (inches)."""
        return self.cell_in * self.n


def confusion_layout(n: int, label_chars: int = 12, panels: int | None = None) -> ConfusionLayout:
    """Size, fonts and annotation of a confusion figure of ``n`` classes.

    Up to :data:`ANNOTATE_MAX` classes: 0.45-inch cells (0.36 past 10 classes) with their counts
    (or rates) printed, two panels. Past it: no numbers in the cells, one panel, cells shrinking from 0.3 to 0.14 inch
    (30 classes: 9 inches, 50: 10, 100: 14) and class names from 8 down to 6 points, so that at
    :data:`DPI` the names stay legible at 100 % zoom and the image at about 2,000 pixels for
    100 classes (the earlier fixed 0.45-inch cell made 50 classes 5,500 pixels wide).

    Args:
        n: the class count (>= 1).
        label_chars: the longest class name, in characters (sets the margins).
        panels: force 1 or 2 panels (default: by ``n`` as above).
    """
    if n < 1:
        raise Sp4scError(f"confusion matrix: {n} classes; need at least 1")
    annotate = n <= ANNOTATE_MAX
    if annotate:
        cell, tick = (0.45, 8.0) if n <= 10 else (0.36, 8.0)
        cell_font = 7.0 if n <= 10 else 6.0
    else:
        cell = max(0.14, min(0.3, 10.0 / n))
        tick = max(5.0, min(8.0, round(0.6 * cell * 72)))
        cell_font = 0.0
    panels = panels if panels is not None else (2 if annotate else 1)
    margin = 0.6 + min(label_chars, 30) * tick * 0.62 / 72  # names plus the "true"/"predicted" label
    side = max(2.5, cell * n)
    colorbar = 0.9
    width = panels * (side + margin + colorbar) + 0.3
    height = side + margin + 0.9  # panel titles and the figure title above
    return ConfusionLayout(n=n, panels=panels, annotate=annotate, cell_in=cell, tick_fontsize=tick,
                           cell_fontsize=cell_font, margin_in=margin,
                           figsize=(round(width, 2), round(height, 2)))


def draw_matrix(fig, ax, values: np.ndarray, counts: np.ndarray, classes: Sequence[str], layout: ConfusionLayout,
                title: str, rates: bool) -> None:
    """One confusion panel on ``ax``: ``values`` as colours, class names, and numbers when ``layout.annotate``.

    Args:
        fig: the figure (for the colour bar).
        ax: the axes.
        values: ``(n, n)`` what the colours show (clip counts or row rates).
        counts: ``(n, n)`` the clip counts (a cell prints only where its count is non-zero).
        classes: class names.
        layout: from :func:`confusion_layout`.
        title: the panel's title.
        rates: ``values`` are rates in [0, 1] (numbers printed as 0.00, colour scale fixed to 1).
    """
    n = len(classes)
    top = 1.0 if rates else max(1.0, float(values.max()))
    from matplotlib.colors import Normalize, PowerNorm

    # without numbers a square-root scale keeps the few-percent confusions of many classes visible
    norm = Normalize(0, top) if layout.annotate else PowerNorm(0.5, vmin=0, vmax=top)
    img = ax.imshow(values, cmap="Blues", norm=norm, interpolation="nearest")
    ax.set_xticks(range(n), labels=list(classes), rotation=90, fontsize=layout.tick_fontsize)
    ax.set_yticks(range(n), labels=list(classes), fontsize=layout.tick_fontsize)
    ax.set_xlabel("predicted", fontsize=max(8.0, layout.tick_fontsize))
    ax.set_ylabel("true", fontsize=max(8.0, layout.tick_fontsize))
    ax.set_title(title, fontsize=9)
    fig.colorbar(img, ax=ax, fraction=0.046, pad=0.02)
    if layout.annotate:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    text = f"{values[i, j]:.2f}" if rates else f"{int(round(values[i, j]))}"
                    ax.text(j, i, text, ha="center", va="center", fontsize=layout.cell_fontsize,
                            color="white" if values[i, j] > 0.5 * top else "black")
    elif n > 1:  # a faint grid every 5 classes keeps a row findable without numbers
        for k in range(5, n, 5):
            ax.axhline(k - 0.5, color="0.85", lw=0.4)
            ax.axvline(k - 0.5, color="0.85", lw=0.4)


def confusion_figure(confusion: Any, classes: Sequence[str], title: str = "confusion (rows: true)"):
    """A matplotlib figure of a row-normalised confusion matrix (for TensorBoard's add_figure).

    Laid out by :func:`confusion_layout` with one panel: cell rates printed up to
    :data:`ANNOTATE_MAX` classes, none past it.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    layout = confusion_layout(len(classes), max((len(str(c)) for c in classes), default=1), panels=1)
    fig, ax = plt.subplots(figsize=layout.figsize, dpi=layout.dpi)
    draw_matrix(fig, ax, norm, cm, classes, layout, title, rates=True)
    fig.tight_layout()
    return fig


class StageEvaluation(torch.nn.Module):
    """The validation/test bookkeeping of a scene classifier, kept out of its LightningModule.

    One :class:`SceneMetrics` per stage (DDP-synced), the device-name index that turns a
    batch's device names into metric rows, and the end-of-stage work: log the scalars
    (overall, per class, per device when the data names devices), build the report (:func:`dcase_results` layout plus
    ``"confusion"``) and add the confusion figure to TensorBoard.

    Args:
        stages: stage names (``("val", "test")``).
    """

    def __init__(self, stages: Sequence[str] = ("val", "test")):
        super().__init__()
        self.stages = tuple(stages)
        self.per_stage = torch.nn.ModuleDict()
        self.device_names: list[str] = []
        self._device_index: dict[str, int] = {}
        self.reports: dict[str, dict[str, Any]] = {}

    def configure(self, num_classes: int, devices: Sequence[str], known: Sequence[str] = ()) -> None:
        """Set the class count and the device names (the data's first, then ``known`` ones not listed).

        Data that names no device (ESC-50, a toy set) gets no device names, ``known`` included:
        its runs log and report no device rows.
        """
        names = [str(d) for d in devices if d]
        if names:
            names += [d for d in known if d not in names]
        if self.device_names[: len(names)] != names:
            self.device_names = names
            self._device_index = {d: i for i, d in enumerate(names)}
        if set(self.per_stage.keys()) != set(self.stages) or any(
            m.device_names != self.device_names or m.num_classes != num_classes for m in self.per_stage.values()
        ):
            self.per_stage = torch.nn.ModuleDict({s: SceneMetrics(num_classes, self.device_names) for s in self.stages})

    def device_indices(self, batch: dict[str, Any], n: int) -> torch.Tensor:
        """Metric row of each clip of ``batch`` (-1: unknown device)."""
        dev = batch.get("device")
        if dev is None:
            return torch.full((n,), -1, dtype=torch.long)
        if isinstance(dev, torch.Tensor):
            return dev.long()
        return torch.tensor([self._device_index.get(str(d), -1) for d in dev], dtype=torch.long)

    def update(self, stage: str, logits: torch.Tensor, y: torch.Tensor, batch: dict[str, Any]) -> None:
        self.per_stage[stage].update(logits, y, self.device_indices(batch, y.shape[0]).to(y.device))

    def finish(self, module, stage: str, classes: Sequence[str], log_confusion: bool = True) -> dict | None:
        """Log ``stage``'s results through ``module.log``, keep and return its report, reset the metric.

        Nothing is logged or kept during Lightning's sanity check.
        """
        metric = self.per_stage[stage]
        if module.trainer.sanity_checking:
            metric.reset()
            return None
        r = metric.compute()  # synced across ranks (sums)
        bar = stage == "val"
        module.log(f"{stage}/acc", r["acc"].float(), prog_bar=bar)
        module.log(f"{stage}/macro_acc", r["macro_acc"].float(), prog_bar=bar)
        module.log(f"{stage}/logloss", r["logloss"].float(), prog_bar=bar)
        report = metric.report(classes)
        for name, v in report["class_wise"].items():
            module.log(f"{stage}_class/acc_{name}", v["accuracy"])
            module.log(f"{stage}_class/logloss_{name}", v["logloss"])
        for name, v in report["device_wise"].items():
            module.log(f"{stage}_device/acc_{name}", v["accuracy"])
            module.log(f"{stage}_device/logloss_{name}", v["logloss"])
        report["confusion"] = r["confusion"].long().tolist()
        self.reports[stage] = report
        if log_confusion and module.global_rank == 0:
            self._log_figure(module, stage, r["confusion"].cpu().numpy(), classes)
        metric.reset()
        return report

    @staticmethod
    def _log_figure(module, stage: str, confusion, classes: Sequence[str]) -> None:
        from pytorch_lightning.loggers import TensorBoardLogger

        for logger in module.loggers:
            if isinstance(logger, TensorBoardLogger):
                import matplotlib.pyplot as plt

                fig = confusion_figure(confusion, classes, f"{stage} confusion, epoch {module.current_epoch}")
                logger.experiment.add_figure(f"{stage}/confusion", fig, global_step=module.global_step)
                plt.close(fig)
