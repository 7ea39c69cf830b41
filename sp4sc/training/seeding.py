"""Repeatable, resumable randomness for training: every draw is a function of (seed, epoch or step, rank).

With ``seed_everything`` set, each training epoch reseeds torch's global generator (dropout and
anything else drawing from it) and the training loader's shuffle from (seed, epoch, rank), and
augmentation draws come from a generator seeded by (seed, global step, rank), so a run resumed
from an epoch-end checkpoint continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import os
from typing import Any

import torch


def global_seed() -> int:
    """The seed given to ``seed_everything`` (LightningCLI's ``seed_everything``), else 0."""
    try:
        return int(os.environ.get("PL_GLOBAL_SEED", "0"))
    except ValueError:
        return 0


def step_generator(step: int, rank: int) -> torch.Generator:
    """The augmentation generator of one training step: seeded by (seed, global step, rank)."""
    g = torch.Generator()
    g.manual_seed((global_seed() * 1_000_003 + step) * 64 + rank)
    return g


def reseed_epoch(loader: Any, epoch: int, rank: int, first: bool) -> None:
    """Reseed torch's global generator and the loader's shuffle at the start of a training epoch.

    A shuffle drawn from a generator owned by the loader continues from wherever the previous
    epoch left it, which a resumed run cannot know: it restarts from (seed, epoch) instead. With
    single-process loading the permutation is drawn lazily at the first batch, after this hook;
    creating the loader iterator draws one number from the same generator (torch's worker base
    seed), which happens after this hook in later epochs but before it in the first epoch a
    process runs (fresh start or resume): that draw is burnt here (``first``) to line them up.

    Args:
        loader: the trainer's training DataLoader (or None).
        epoch: the epoch about to run (0-based).
        rank: the process rank.
        first: whether this is the first epoch this process runs.
    """
    seed = global_seed()
    torch.manual_seed((seed * 1_000_003 + epoch) * 64 + rank)
    generator = getattr(getattr(loader, "sampler", None), "generator", None)
    if isinstance(generator, torch.Generator):
        generator.manual_seed(seed * 1_000_003 + epoch)
        if first:
            torch.empty((), dtype=torch.int64).random_(generator=generator)


__all__ = ["global_seed", "reseed_epoch", "step_generator"]
