"""Precise BatchNorm: BatchNorm statistics re-estimated over the training clips before the last validation.

During training a BatchNorm layer keeps an exponential moving average of the statistics of the
last few dozen augmented batches; on a small dataset that estimate swings from epoch to epoch,
and so does the score of the same weights. :func:`recompute_bn_statistics` replaces it by a plain
average over many batches (Wu & Johnson, 2021, "Rethinking 'Batch' in BatchNorm");
:func:`recompute_from_training_clips` is what ``--model.precise_bn`` runs.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from sp4sc.errors import Sp4scError

PRECISE_BN_MAX_BATCHES = 200  # ample for a population estimate (Wu & Johnson 2021 use a few hundred batches)


@torch.no_grad()
def recompute_bn_statistics(model: nn.Module, batches, forward: Optional[Callable] = None,
                            max_batches: int = PRECISE_BN_MAX_BATCHES) -> int:
    """Precise BatchNorm: re-estimate every BatchNorm's running statistics as plain averages over ``batches``.

    During training a BatchNorm layer keeps an exponential moving average (momentum 0.1) of the
    statistics of the last few dozen augmented batches, taken while the weights were still moving;
    on a small dataset that estimate swings from epoch to epoch, and so does the evaluation of
    the same weights. Here the weights are frozen and each layer's running mean and variance
    become the average over the given batches (``momentum=None``), as in "Rethinking 'Batch' in
    BatchNorm" (Wu & Johnson, 2021). Only the BatchNorm layers run in training mode: dropout and
    everything else stay in evaluation mode, so no other layer changes what the statistics see.
    The weights are untouched; the modes and momenta are restored afterwards.

    Args:
        model: the module whose BatchNorm layers to update.
        batches: an iterable of inputs, each passed to ``forward`` (dicts with ``"x"`` are unpacked).
        forward: ``x -> output`` (default: ``model``).
        max_batches: stop after this many batches.

    Returns:
        the number of clips the statistics were averaged over (0 when ``model`` has no BatchNorm).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in norms]
    forward = forward or model
    clips = 0
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches seen
            m.train()
        for i, batch in enumerate(batches):
            if i >= max_batches:
                break
            x = batch["x"] if isinstance(batch, dict) else batch
            forward(x)
            clips += x.shape[0]
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        for m, training in modes.items():
            m.train(training)
    return clips


def recompute_from_training_clips(model: nn.Module, loader, seed: int, epoch: int) -> int:
    """:func:`recompute_bn_statistics` of a LightningModule over its training clips, unaugmented.

    The clips come in a shuffled order (batches mixing classes, as in training) drawn from a
    generator of their own seeded by ``seed``, so the training shuffle is not touched.

    Args:
        model: the module (its ``device`` is where the batches go; called as ``model(x)``).
        loader: the trainer's training DataLoader.
        seed: seed of the shuffle.
        epoch: the epoch, for the log line (0-based).

    Returns:
        the number of clips averaged over.
    """
    from torch.utils.data import DataLoader

    from sp4sc.log import logger

    if not isinstance(loader, DataLoader):
        raise Sp4scError("--model.precise_bn needs one training DataLoader (got "
                         f"{type(loader).__name__}); turn it off with --model.precise_bn false")
    batches = DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=True,
                         generator=torch.Generator().manual_seed(seed), collate_fn=loader.collate_fn, num_workers=0)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(x.to(model.device))

    clips = recompute_bn_statistics(model, batches, forward)
    logger.info("precise BN: BatchNorm statistics re-estimated over %d training clips (epoch %d)", clips, epoch + 1)
    return clips


__all__ = ["PRECISE_BN_MAX_BATCHES", "recompute_bn_statistics", "recompute_from_training_clips"]
