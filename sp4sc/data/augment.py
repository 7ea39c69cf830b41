"""Spectrogram augmentations: SpecAugment stripes and mixup.

SpecAugment here follows the stripe dropping SP4ASC used (through torchlibrosa's
``SpecAugmentation``; facts read from valeoai/SP4ASC ``sp4asc/models/cnns.py``
and torchlibrosa ``augmentation.py``, no code copied): for every example and
every stripe, a width is drawn uniformly in ``[0, width - 1]`` and a start
uniformly in ``[0, size - drawn_width - 1]``; ``time_stripes`` stripes along time
then ``freq_stripes`` stripes along mel bins are replaced. SP4ASC applies it
after the input BatchNorm, so its zeros are the normalised mean of each mel
bin; sp4sc applies it before the backbone on raw log-mel dB, so the default
fill is ``"mean"``: each example's own mean over time of each mel bin (the
closest stand-in for "zero after normalisation"). ``fill="zero"`` writes 0.

mixup (Zhang et al., 2018) as SP4ASC's ``MixUp``: one mixing weight per batch
drawn from Beta(alpha, alpha), the batch mixed with a random permutation of
itself, inputs and one-hot targets alike.

Frequency-MixStyle (Schmid et al., DCASE 2022 Workshop; the definition of the
CPJKU DCASE 2024 Task 1 baseline's ``helpers/utils.py::mixstyle``, facts only):
with probability ``p`` per batch, each clip's log-mel is standardised per
frequency bin (mean and standard deviation over time, gradients blocked through
the statistics) and given the statistics ``lam * own + (1 - lam) * other's`` of
another clip of the batch (a random permutation), ``lam ~ Beta(alpha, alpha)``
per clip. Labels are untouched: it perturbs the device's frequency response.

Time rolling (the baseline's ``RollDataset``: each training waveform rolled
circularly by a uniform whole number of samples in ``[-roll, roll]``): sp4sc
trains on cached log-mels, so :func:`roll_time` rolls each clip's frames
circularly by a uniform whole number of frames, the waveform roll by a
multiple of the hop (the frames at the seam differ).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from sp4sc.errors import Sp4scError

FILLS = ("mean", "zero")


def _stripe_mask(
    batch: int, size: int, width: int, stripes: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Boolean ``(batch, size)`` mask, True inside the dropped stripes (on CPU)."""
    width = min(int(width), size)
    if stripes <= 0 or width <= 1:  # widths are drawn in [0, width - 1]: nothing to drop
        return torch.zeros(batch, size, dtype=torch.bool)
    widths = torch.randint(0, width, (batch, stripes), generator=generator)  # (B, S)
    # start uniform in [0, size - w - 1] (torchlibrosa's randint(0, size - w))
    u = torch.rand(batch, stripes, generator=generator, dtype=torch.float64)
    starts = (u * (size - widths).double()).floor().long()  # (B, S)
    pos = torch.arange(size).view(1, 1, size)  # (1, 1, size)
    inside = (pos >= starts.unsqueeze(-1)) & (pos < (starts + widths).unsqueeze(-1))  # (B, S, size)
    return inside.any(dim=1)  # (B, size)


class SpecAugment(nn.Module):
    """Replace random time and frequency stripes of ``(batch, 1, frames, mels)`` inputs.

    Active in training mode. In eval mode it is the identity unless called with
    ``force=True`` or a ``generator`` (seeded test-time augmentation: the same
    generator seed gives the same stripes).

    Args:
        time_width: stripe widths along time are drawn in ``[0, time_width - 1]`` frames.
        time_stripes: number of time stripes per example.
        freq_width: stripe widths along mel bins are drawn in ``[0, freq_width - 1]``.
        freq_stripes: number of frequency stripes per example.
        fill: ``"mean"`` (each example's per-mel-bin mean over time) or ``"zero"``.
    """

    def __init__(
        self,
        time_width: int = 0,
        time_stripes: int = 0,
        freq_width: int = 0,
        freq_stripes: int = 0,
        fill: str = "mean",
    ):
        super().__init__()
        values = (time_width, time_stripes, freq_width, freq_stripes)
        if any(int(v) != v or v < 0 for v in values):
            raise Sp4scError(f"spec_augment {list(values)}: expected four non-negative integers "
                             "[time width, time stripes, freq width, freq stripes]")
        if fill not in FILLS:
            raise Sp4scError(f"spec_augment fill {fill!r}: choose one of {list(FILLS)}")
        self.time_width, self.time_stripes = int(time_width), int(time_stripes)
        self.freq_width, self.freq_stripes = int(freq_width), int(freq_stripes)
        self.fill = fill

    @classmethod
    def from_list(cls, values: Sequence[int] | None, fill: str = "mean") -> "SpecAugment | None":
        """Build from SP4ASC's ``[time width, time stripes, freq width, freq stripes]`` (None: no augmentation)."""
        if values is None or len(values) == 0:
            return None
        if len(values) != 4:
            raise Sp4scError(f"spec_augment {list(values)}: expected 4 numbers "
                             "[time width, time stripes, freq width, freq stripes]")
        return cls(*values, fill=fill)

    @property
    def enabled(self) -> bool:
        return (self.time_width > 1 and self.time_stripes > 0) or (self.freq_width > 1 and self.freq_stripes > 0)

    def extra_repr(self) -> str:
        return (f"time_width={self.time_width}, time_stripes={self.time_stripes}, "
                f"freq_width={self.freq_width}, freq_stripes={self.freq_stripes}, fill={self.fill!r}")

    def forward(
        self, x: torch.Tensor, *, force: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        # (batch, 1, frames, mels)
        if not (self.training or force or generator is not None) or not self.enabled:
            return x
        if x.dim() != 4:
            raise Sp4scError(f"SpecAugment: expected (batch, 1, frames, mels), got shape {tuple(x.shape)}")
        b, _, t, f = x.shape
        tmask = _stripe_mask(b, t, self.time_width, self.time_stripes, generator)  # (B, T)
        fmask = _stripe_mask(b, f, self.freq_width, self.freq_stripes, generator)  # (B, F)
        mask = (tmask.unsqueeze(-1) | fmask.unsqueeze(1)).unsqueeze(1).to(x.device, non_blocking=True)  # (B, 1, T, F)
        if self.fill == "zero":
            fill = torch.zeros((), dtype=x.dtype, device=x.device)
        else:
            fill = x.mean(dim=2, keepdim=True)  # (B, 1, 1, F): per-example, per-mel-bin mean over time
        return torch.where(mask, fill, x)


def mixup_draw(batch: int, alpha: float, generator: torch.Generator | None = None) -> tuple[torch.Tensor, float]:
    """The permutation ``(batch,)`` (on CPU) and the weight of one mixup draw, as :func:`mixup` draws them.

    For mixing something else the same way (the waveforms an online distillation teacher
    hears): the same generator state gives the same draw as :func:`mixup`.
    """
    perm = torch.randperm(batch, generator=generator)
    # Beta draw through numpy, seeded from the torch generator so both follow the same seed.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    return perm, float(np.random.default_rng(seed).beta(alpha, alpha))


def mixup(
    x: torch.Tensor,
    y_onehot: torch.Tensor,
    alpha: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix a batch with a permutation of itself.

    Args:
        x: inputs ``(batch, ...)``.
        y_onehot: targets ``(batch, classes)`` (one-hot or already soft).
        alpha: Beta(alpha, alpha) parameter; ``alpha <= 0`` returns the inputs unchanged.
        generator: torch generator for the permutation and the mixing weight
            (None: torch's global generator, so ``seed_everything`` makes it repeatable).

    Returns:
        ``(x_mixed, y_mixed)`` with ``lam * a + (1 - lam) * a[perm]`` for both.
    """
    if alpha is None or alpha <= 0:
        return x, y_onehot
    if x.shape[0] != y_onehot.shape[0]:
        raise Sp4scError(f"mixup: {x.shape[0]} inputs but {y_onehot.shape[0]} targets")
    perm, lam = mixup_draw(x.shape[0], alpha, generator)
    perm = perm.to(x.device)
    x_mixed = x * lam + x[perm] * (1.0 - lam)
    y = y_onehot.to(torch.float32)
    y_mixed = y * lam + y[perm] * (1.0 - lam)
    return x_mixed, y_mixed


def mix_frequency_stats(x: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Give each clip the per-frequency statistics ``lam * own + (1 - lam) * x[perm]``'s (the MixStyle step).

    Args:
        x: log-mels ``(batch, 1, frames, mels)``.
        perm: the other clip of each clip, ``(batch,)`` indices.
        lam: mixing weights, ``(batch,)`` in [0, 1].
        eps: added to the variance before the square root.

    Returns:
        ``(x - mu) / sig * sig_mix + mu_mix`` with ``mu``, ``sig`` each clip's mean and
        standard deviation over time (and channel) per mel bin, detached; ``mu_mix``,
        ``sig_mix`` the ``lam``-mixtures of the clip's and its partner's.
    """
    if x.dim() != 4:
        raise Sp4scError(f"mixstyle: expected (batch, 1, frames, mels), got shape {tuple(x.shape)}")
    mu = x.mean(dim=(1, 2), keepdim=True).detach()  # (batch, 1, 1, mels)
    sig = (x.var(dim=(1, 2), keepdim=True) + eps).sqrt().detach()  # (batch, 1, 1, mels), unbiased variance
    lam = lam.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)  # (batch, 1, 1, 1)
    perm = perm.to(x.device)
    mu_mix = mu * lam + mu[perm] * (1.0 - lam)
    sig_mix = sig * lam + sig[perm] * (1.0 - lam)
    return (x - mu) / sig * sig_mix + mu_mix  # (batch, 1, frames, mels)


def freq_mixstyle(x: torch.Tensor, p: float, alpha: float, generator: torch.Generator | None = None,
                  eps: float = 1e-6) -> torch.Tensor:
    """Frequency-MixStyle of a training batch (see the module docstring); ``p <= 0`` returns ``x`` itself.

    Args:
        x: log-mels ``(batch, 1, frames, mels)``.
        p: probability that this batch is mixed (one draw per batch, as the baseline).
        alpha: Beta(alpha, alpha) parameter of the per-clip weights (the baseline: 0.3).
        generator: torch generator of all draws (None: torch's global generator).
        eps: variance floor.
    """
    if p <= 0 or x.shape[0] < 2:
        return x
    if alpha <= 0:
        raise Sp4scError(f"mixstyle: alpha {alpha} must be > 0 (Beta(alpha, alpha) weights)")
    if float(torch.rand((), generator=generator)) >= p:
        return x
    perm = torch.randperm(x.shape[0], generator=generator)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())  # Beta draws through numpy, same seed
    lam = torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size=x.shape[0]))
    return mix_frequency_stats(x, perm, lam, eps)


def roll_time(x: torch.Tensor, max_frames: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Roll each clip circularly along time by its own uniform shift in ``[-max_frames, max_frames]``.

    Args:
        x: log-mels ``(batch, 1, frames, mels)``.
        max_frames: largest shift; 0 returns ``x`` itself.
        generator: torch generator of the shifts.
    """
    if max_frames <= 0:
        return x
    if x.dim() != 4:
        raise Sp4scError(f"roll_time: expected (batch, 1, frames, mels), got shape {tuple(x.shape)}")
    b, _, t, _ = x.shape
    shifts = torch.randint(-int(max_frames), int(max_frames) + 1, (b,), generator=generator)  # (batch,)
    # rolled[i, :, j] = x[i, :, (j - shift_i) mod t], as torch.roll(x[i], shift_i, dims=1)
    index = (torch.arange(t).view(1, t) - shifts.view(b, 1)) % t  # (batch, frames)
    index = index.to(x.device).view(b, 1, t, 1).expand(-1, x.shape[1], -1, x.shape[3])
    return torch.gather(x, 2, index)  # (batch, 1, frames, mels)
