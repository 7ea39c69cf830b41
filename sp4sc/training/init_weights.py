"""Start a fit from a trained model's weights: device-specific fine-tuning (DCASE 2025 Task 1).

The DCASE 2025 baseline trains a general model on the 25 % split, then fine-tunes one
copy per training device on that device's clips (Schmid et al., DCASE 2025 Task 1 task
description, arXiv 2505.01747). With sp4sc::

    sp4sc fit --config recipes/tau2022_cpmobile.yaml --data.root ROOT --data.split 25 \\
        --data.train_devices '[a]' --model.lr 1e-4 --trainer.max_epochs 20 \\
        --trainer.callbacks+=sp4sc.training.init_weights.InitWeights \\
        --trainer.callbacks.path runs/tau2022_cpmobile/checkpoints/best.ckpt \\
        --trainer.default_root_dir runs/tau2022_cpmobile_a

The callback copies the backbone weights of a model file or Lightning checkpoint into
the new run's backbone when fitting starts (strictly: the architecture must match, a
mismatch names the keys). A resumed run (``--ckpt_path``) keeps its own weights.
"""

from __future__ import annotations

import pytorch_lightning as pl

from sp4sc.errors import Sp4scError


class InitWeights(pl.Callback):
    """Load a trained backbone's weights at the start of a fit.

    Args:
        path: model file (``sp4sc export`` / ``save_model``) or Lightning checkpoint of the
            same backbone (read with ``weights_only=True``).
    """

    def __init__(self, path: str):
        super().__init__()
        if not path:
            raise Sp4scError("--trainer.callbacks.path: the model file or checkpoint to start from is required")
        self.path = str(path)
        self.loaded_from: str | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if getattr(trainer, "ckpt_path", None):
            return  # resuming: the checkpoint's own weights win
        from sp4sc.models.checkpoint import check_state_dict, load_model

        backbone = getattr(pl_module, "backbone", None)
        if backbone is None:
            raise Sp4scError(f"InitWeights {self.path}: the model has no backbone yet; is this an sp4sc recipe?")
        loaded = load_model(self.path)
        if loaded.name != getattr(pl_module, "arch_name", loaded.name):
            raise Sp4scError(f"InitWeights {self.path}: holds a {loaded.name!r} model but this run trains "
                             f"{pl_module.arch_name!r}; start from a checkpoint of the same backbone")
        device = next(backbone.parameters()).device
        check_state_dict(backbone, {k: v.to(device) for k, v in loaded.model.state_dict().items()}, self.path)
        self.loaded_from = self.path
