"""Pieces shared by the model families: input checks, the per-mel affine, BN folding maths."""

from __future__ import annotations

import torch
from torch import nn

from sp4sc.errors import Sp4scError


def is_tracing() -> bool:
    """True while TorchScript, torch.compile/torch.export or ONNX export trace the model.

    Input checks are skipped then: they would bake the example shape into the graph.
    """
    return bool(
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
        or torch.onnx.is_in_onnx_export()
    )


def check_input(x: torch.Tensor, n_mels: int, min_frames: int, model: str) -> None:
    """Raise a one-line :class:`Sp4scError` unless ``x`` is ``(batch, 1, >= min_frames, n_mels)``."""
    if is_tracing():
        return
    if x.dim() != 4 or x.shape[1] != 1 or x.shape[3] != n_mels:
        raise Sp4scError(
            f"{model}: expected log-mels shaped (batch, 1, frames, {n_mels}), got {tuple(x.shape)}; "
            "use the model's front end (n_mels must match) and add the channel axis"
        )
    if x.shape[2] < min_frames:
        raise Sp4scError(
            f"{model}: {x.shape[2]} frames is too short, the model needs at least {min_frames} "
            "(one per 2x2 pooling level); use longer clips"
        )


def bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as ``y = scale * x + shift`` per channel, computed in float64.

    Keeps BatchNorm's ``eps`` (scale = gamma / sqrt(running_var + eps)); SP4ASC's
    ``merge_conv_bn`` drops it, which changes the function when running_var is small.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise Sp4scError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    shift = beta - mean * scale
    return scale, shift


class MelAffine(nn.Module):
    """Per-mel-bin affine ``x * weight + bias`` on ``(batch, 1, frames, mels)``: the folded input BN."""

    def __init__(self, n_mels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_mels))
        self.bias = nn.Parameter(torch.zeros(n_mels))

    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm) -> "MelAffine":
        """The eval-mode function of ``bn`` (applied over the mel axis) as an affine."""
        scale, shift = bn_scale_shift(bn)
        affine = cls(scale.numel()).to(bn.running_mean.device)
        with torch.no_grad():
            affine.weight.copy_(scale.to(affine.weight.dtype))
            affine.bias.copy_(shift.to(affine.bias.dtype))
        return affine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (batch, 1, frames, mels) -> same
        return x * self.weight + self.bias


def apply_mel_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply the input normalisation over mel bins: a BatchNorm2d(n_mels) or a folded :class:`MelAffine`."""
    if isinstance(norm, MelAffine):
        return norm(x)  # (batch, 1, frames, mels)
    x = x.transpose(1, 3)  # (batch, mels, frames, 1): BN statistics per mel bin, as PANNs and SP4ASC do
    x = norm(x)
    return x.transpose(1, 3)  # (batch, 1, frames, mels)


def fold_conv_bias(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """Fold a per-output-channel affine (BN) that follows ``conv`` into its weight and bias, in place."""
    with torch.no_grad():
        w = conv.weight.detach().double() * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
        b = shift.clone()
        if conv.bias is not None:
            b = b + scale * conv.bias.detach().double()
        conv.weight.copy_(w.to(conv.weight.dtype))
        conv.bias = nn.Parameter(b.to(conv.weight.dtype))


def time_freq_head_pool(x: torch.Tensor) -> torch.Tensor:
    """PANNs' clip pooling: mean over frequency, then max + mean over time."""
    # (batch, channels, frames, mels)
    x = torch.mean(x, dim=3)  # (batch, channels, frames)
    x_max, _ = torch.max(x, dim=2)  # (batch, channels)
    return x_max + torch.mean(x, dim=2)  # (batch, channels)
