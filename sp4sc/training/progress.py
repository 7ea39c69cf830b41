"""Training progress as plain lines, for logs: when stdout is not a terminal, a progress bar prints nothing useful.

One line per epoch::

    epoch 3/200 step 30 train_loss 1.8421 val_acc 0.4125 val_logloss 1.6012 12.4 clips/s elapsed 0:01:02 eta 0:40:10

and, when an epoch is long, one every N batches::

    epoch 3/200 batch 50/437 train_loss 1.9120 12.1 clips/s elapsed 0:00:41
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import pytorch_lightning as pl

from sp4sc.cvfolder import WALL

LONG_EPOCH_BATCHES = 100  # an epoch with at least this many batches also gets batch lines


def _hms(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _metric(metrics: dict[str, Any], *names: str) -> float | None:
    for name in names:
        value = metrics.get(name)
        if value is not None:
            try:
                return float(value)
            except (TypeError, ValueError):
                continue
    return None


def _batch_size(batch: Any) -> int:
    if isinstance(batch, dict) and hasattr(batch.get("y"), "shape"):
        return int(batch["y"].shape[0])
    return 0


class LineProgress(pl.Callback):
    """Print one plain line per epoch (and every ``every_n_batches`` batches of a long epoch) to stdout.

    Args:
        every_n_batches: batch-line period; None: a tenth of the epoch when it has at least
            :data:`LONG_EPOCH_BATCHES` batches, else no batch lines. 0 disables batch lines.
        stream: where to write (default: the current ``sys.stdout``).
    """

    def __init__(self, every_n_batches: int | None = None, stream=None):
        self.every_n_batches = every_n_batches
        self.stream = stream
        self._t0 = self._epoch_t0 = 0.0
        self._epoch_clips = 0
        self._first_epoch = 0
        self._validated_epoch: int | None = None  # the epoch whose validation ran last (not the sanity check)

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    def _period(self, trainer: pl.Trainer) -> int:
        if self.every_n_batches is not None:
            return max(0, int(self.every_n_batches))
        env = os.environ.get("SP4SC_PROGRESS_EVERY")
        if env and env.isdigit():
            return int(env)
        total = trainer.num_training_batches
        if isinstance(total, int) and total >= LONG_EPOCH_BATCHES:
            return max(1, total // 10)
        return 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()
        self._first_epoch = trainer.current_epoch
        if trainer.is_global_zero:
            setup = getattr(pl_module, "train_setup", None) or {}
            chosen = ", ".join(f"{k} {'on' if v else 'off'}" for k, v in setup.items() if isinstance(v, bool))
            start = f" from epoch {trainer.current_epoch}" if trainer.current_epoch else ""
            self._print(f"training {trainer.max_epochs} epochs{start}, {trainer.num_training_batches} batches "
                        f"per epoch" + (f" ({chosen})" if chosen else ""))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_t0 = time.perf_counter()
        self._epoch_clips = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._epoch_clips += _batch_size(batch) * trainer.world_size
        period = self._period(trainer)
        if not period or (batch_idx + 1) % period or not trainer.is_global_zero:
            return
        loss = _metric(trainer.callback_metrics, "train/loss_step", "train/loss")
        rate = self._epoch_clips / max(time.perf_counter() - self._epoch_t0, 1e-9)
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}",
                 f"batch {batch_idx + 1}/{trainer.num_training_batches}"]
        if loss is not None:
            parts.append(f"train_loss {loss:.4f}")
        parts += [f"{rate:.1f} clips/s", f"elapsed {_hms(time.perf_counter() - self._t0)}"]
        self._print(" ".join(parts))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated_epoch = trainer.current_epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        now = time.perf_counter()
        m = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}", f"step {trainer.global_step}"]
        shown = [("train_loss", ("train/loss_epoch", "train/loss"))]
        if self._validated_epoch == trainer.current_epoch:  # not the figures of an earlier epoch's validation
            shown += [("val_acc", ("val/acc",)), ("val_logloss", ("val/logloss",))]
        for label, names in shown:
            value = _metric(m, *names)
            if value is not None:
                parts.append(f"{label} {value:.4f}")
        parts.append(f"{self._epoch_clips / max(now - self._epoch_t0, 1e-9):.1f} clips/s")
        elapsed = now - self._t0
        done = trainer.current_epoch + 1 - self._first_epoch
        left = max(0, (trainer.max_epochs or 0) - trainer.current_epoch - 1)
        parts.append(f"elapsed {_hms(elapsed)}")
        if done > 0 and trainer.max_epochs and trainer.max_epochs > 0:
            parts.append(f"eta {_hms(elapsed / done * left)}")
        self._print(" ".join(parts))


class WallClock(pl.Callback):
    """Adds each epoch's training wall time to ``<default_root_dir>/wall.json`` (``sp4sc cv`` uses it), so a
    resumed run's total counts the time spent before a kill too."""

    FILE = WALL

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import json
        from pathlib import Path

        self._path = Path(trainer.default_root_dir) / self.FILE
        self._base = json.loads(self._path.read_text())["wall_s"] if self._path.is_file() else 0.0
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from sp4sc.fileio import write_json

        if trainer.is_global_zero:
            write_json(self._path, {"wall_s": self._base + time.perf_counter() - self._t0,
                                    "epochs": trainer.current_epoch + 1})


def use_line_progress(trainer: pl.Trainer, force: bool | None = None) -> bool:
    """Swap the trainer's progress bar for :class:`LineProgress` when stdout is not a terminal.

    Returns True when the swap was made. ``force`` overrides the terminal test.
    """
    plain = (not sys.stdout.isatty()) if force is None else force
    if not plain or any(isinstance(cb, LineProgress) for cb in trainer.callbacks):
        return False
    from pytorch_lightning.callbacks.progress import ProgressBar

    had_bar = any(isinstance(cb, ProgressBar) for cb in trainer.callbacks)
    trainer.callbacks[:] = [cb for cb in trainer.callbacks if not isinstance(cb, ProgressBar)]
    if had_bar or force:
        trainer.callbacks.append(LineProgress())
        return True
    return False
