"""Linear probe on frozen embeddings and aggregation of window predictions.

Aggregations (from the window embeddings ``E = (e_1 .. e_n)`` of a clip to a
clip prediction; the paper's μ_m and μ_a were not available to us in exact
form, so these are our definitions):

* ``mean-embedding``: the clip embedding is the mean of its window embeddings
  ``ē = (1/n) Σ e_i``; the probe is trained on the clip embeddings of the
  training clips and applied to ``ē``.
* ``mean-prediction``: the probe is trained on window embeddings, each window
  inheriting its clip's label; the clip probabilities are the mean of the
  window probabilities ``(1/n) Σ softmax(f(e_i))``.
* ``majority-vote``: the same window probe; the clip's class is the most
  frequent window argmax, ties broken by the larger mean window probability.
  It gives no probabilities, so its log loss is not defined (reported as null).

Every probe input is standardised with the mean and standard deviation of its
own training inputs (clip embeddings or window embeddings). The probe is a
linear layer, or ``Linear -> ReLU -> Linear`` with ``hidden > 0``, trained
with AdamW and cross-entropy by a Lightning ``Trainer`` on the CPU. The epoch
with the lowest loss on the selection split is kept (for TAU2020 the fold1
evaluate split, as the issue specifies, which is also the reported split: the
figures are therefore slightly optimistic, like every DCASE development result).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import nn

from sp4sc.errors import Sp4scError

AGGREGATIONS = ("mean-embedding", "mean-prediction", "majority-vote")


@dataclass
class ProbeConfig:
    """Probe training settings.

    Attributes:
        hidden: units of the hidden layer; 0 for a linear probe.
        epochs: training epochs (the best epoch on the selection split is kept).
        batch_size: examples per step.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
    """

    hidden: int = 0
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4

    @classmethod
    def from_dict(cls, d: dict) -> "ProbeConfig":
        """Build from a dict; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise Sp4scError(f"probe config: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**d)

    def __post_init__(self) -> None:
        if self.hidden < 0 or self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise Sp4scError(f"probe config: need hidden >= 0, epochs >= 1, batch_size >= 1, lr > 0, weight_decay >= 0 (got {self})")


def _lightning():
    import pytorch_lightning as pl

    return pl


def make_probe_module(dim: int, n_classes: int, cfg: ProbeConfig, mean: np.ndarray, std: np.ndarray):
    """A LightningModule: standardisation with training statistics, then the probe."""
    pl = _lightning()

    class LinearProbe(pl.LightningModule):
        """Standardise with the training statistics, then a linear (or one-hidden-layer) classifier."""

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
            self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
            if cfg.hidden > 0:
                self.net = nn.Sequential(nn.Linear(dim, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, n_classes))
            else:
                self.net = nn.Linear(dim, n_classes)
            self._val_sum = 0.0
            self._val_n = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # x: (batch, dim) -> logits (batch, n_classes)
            return self.net((x - self.mean) / self.std)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def on_validation_epoch_start(self) -> None:
            self._val_sum, self._val_n = 0.0, 0

        def validation_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.cross_entropy(self(x), y, reduction="sum")
            self._val_sum += float(loss)
            self._val_n += len(y)

        def on_validation_epoch_end(self) -> None:
            self.log("val_loss", self._val_sum / max(self._val_n, 1), prog_bar=False)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    return LinearProbe()


def _keep_best_callback():
    pl = _lightning()

    class KeepBest(pl.Callback):
        """Keeps the weights of the epoch with the lowest selection loss."""

        def __init__(self) -> None:
            self.best = float("inf")
            self.state = None
            self.epoch = -1

        def on_validation_epoch_end(self, trainer, module) -> None:
            loss = float(trainer.callback_metrics.get("val_loss", float("inf")))
            if loss < self.best:
                self.best = loss
                self.state = copy.deepcopy(module.state_dict())
                self.epoch = trainer.current_epoch

    return KeepBest()


def train_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    n_classes: int,
    cfg: ProbeConfig,
    seed: int,
) -> nn.Module:
    """Train a probe; return it (eval mode) at its best epoch on ``(x_val, y_val)``.

    Args:
        x_train: float ``(n, dim)`` training inputs.
        y_train: int ``(n,)`` labels.
        x_val: float ``(m, dim)`` selection inputs.
        y_val: int ``(m,)`` labels.
        n_classes: number of classes.
        cfg: training settings.
        seed: seed of the initial weights and the batch order.
    """
    pl = _lightning()
    x_train = np.asarray(x_train, dtype=np.float32)
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std = np.where(std > 1e-6, std, 1.0).astype(np.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = make_probe_module(x_train.shape[1], n_classes, cfg, mean, std)
    gen = torch.Generator().manual_seed(seed)
    train_dl = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(x_train), torch.as_tensor(y_train, dtype=torch.long)),
        batch_size=cfg.batch_size, shuffle=True, generator=gen,
    )
    val_dl = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(
            torch.from_numpy(np.asarray(x_val, dtype=np.float32)), torch.as_tensor(y_val, dtype=torch.long)
        ),
        batch_size=4096,
    )
    best = _keep_best_callback()
    quiet = [logging.getLogger(n) for n in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = pl.Trainer(
                max_epochs=cfg.epochs, accelerator="cpu", devices=1, logger=False,
                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                num_sanity_val_steps=0, callbacks=[best], deterministic=False,
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                trainer.fit(module, train_dl, val_dl)
    finally:
        for lg, lv in zip(quiet, levels):
            lg.setLevel(lv)
    if best.state is not None:
        module.load_state_dict(best.state)
    return module.eval()


def predict_probs(module: nn.Module, x: np.ndarray, batch: int = 8192) -> np.ndarray:
    """Softmax probabilities ``(n, n_classes)`` of a probe."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(np.asarray(x[i : i + batch], dtype=np.float32))
            out.append(torch.softmax(module(xb), dim=-1).numpy())
    return np.concatenate(out, axis=0) if out else np.zeros((0, 0), dtype=np.float32)


def majority_vote(window_probs: np.ndarray) -> int:
    """Class of a clip by majority over its windows' argmax; ties -> larger mean probability."""
    votes = np.bincount(window_probs.argmax(axis=1), minlength=window_probs.shape[1])
    tied = np.flatnonzero(votes == votes.max())
    return int(tied[np.argmax(window_probs.mean(axis=0)[tied])])


def clip_predictions(
    how: str,
    clip_module: nn.Module | None,
    window_module: nn.Module | None,
    embeddings: list[np.ndarray],
) -> tuple[np.ndarray, np.ndarray | None]:
    """Clip predictions of one aggregation.

    Args:
        how: one of :data:`AGGREGATIONS`.
        clip_module: probe trained on mean embeddings (``mean-embedding``).
        window_module: probe trained on window embeddings (the other two).
        embeddings: per clip, window embeddings ``(n_windows, dim)``.

    Returns:
        predicted classes ``(clips,)`` and probabilities ``(clips, classes)``
        (None for ``majority-vote``).
    """
    if how == "mean-embedding":
        probs = predict_probs(clip_module, np.stack([e.mean(axis=0) for e in embeddings]))
        return probs.argmax(axis=1), probs
    if how not in AGGREGATIONS:
        raise Sp4scError(f"aggregation {how!r}: unknown; choose one of {', '.join(AGGREGATIONS)}")
    counts = [len(e) for e in embeddings]
    wp = predict_probs(window_module, np.concatenate(embeddings, axis=0))
    per_clip = np.split(wp, np.cumsum(counts)[:-1])
    if how == "mean-prediction":
        probs = np.stack([p.mean(axis=0) for p in per_clip])
        return probs.argmax(axis=1), probs
    return np.array([majority_vote(p) for p in per_clip]), None


def fit_and_score(
    train_emb: list[np.ndarray],
    y_train: np.ndarray,
    eval_emb: list[np.ndarray],
    y_eval: np.ndarray,
    n_classes: int,
    cfg: ProbeConfig,
    seed: int,
    aggregations: tuple[str, ...] = AGGREGATIONS,
) -> dict[str, dict[str, float | None]]:
    """Train the probes one seed needs and score every aggregation on the eval clips.

    Returns:
        aggregation -> {"accuracy" (class-averaged, DCASE), "micro_accuracy",
        "logloss" (None for majority-vote)}.
    """
    from sp4sc.metrics import accuracy, log_loss, macro_accuracy

    y_train = np.asarray(y_train)
    y_eval = np.asarray(y_eval)
    clip_module = window_module = None
    if "mean-embedding" in aggregations:
        clip_module = train_probe(
            np.stack([e.mean(axis=0) for e in train_emb]), y_train,
            np.stack([e.mean(axis=0) for e in eval_emb]), y_eval, n_classes, cfg, seed,
        )
    if any(a != "mean-embedding" for a in aggregations):
        wx = np.concatenate(train_emb, axis=0)
        wy = np.repeat(y_train, [len(e) for e in train_emb])
        vx = np.concatenate(eval_emb, axis=0)
        vy = np.repeat(y_eval, [len(e) for e in eval_emb])
        window_module = train_probe(wx, wy, vx, vy, n_classes, cfg, seed)
    scores: dict[str, dict[str, float | None]] = {}
    for how in aggregations:
        pred, probs = clip_predictions(how, clip_module, window_module, eval_emb)
        scores[how] = {
            "accuracy": float(macro_accuracy(y_eval, pred, n_classes)),
            "micro_accuracy": float(accuracy(y_eval, pred)),
            "logloss": float(log_loss(y_eval, probs)) if probs is not None else None,
        }
    return scores


def n_probe_parameters(dim: int, n_classes: int, hidden: int) -> int:
    """Parameters of the probe (the standardisation is an affine pair per input: 2·dim more)."""
    if hidden > 0:
        return dim * hidden + hidden + hidden * n_classes + n_classes + 2 * dim
    return dim * n_classes + n_classes + 2 * dim


def probe_macs(dim: int, n_classes: int, hidden: int) -> int:
    """Multiply-accumulates of one probe evaluation."""
    return dim * hidden + hidden * n_classes if hidden > 0 else dim * n_classes
