"""CPU training path of SP4SC's separable blocks: the same function, computed the way a CPU is fast at it.

SP4SC's two dilated 3-tap depthwise kernels (time offsets -2, 0, +2 and mel
offsets -2, 0, +2) add up to a plus-shaped kernel with five distinct taps per
channel (the centre tap is shared). oneDNN's general depthwise backward is
slow on CPUs (its weight gradient falls back to generic kernels and dominated
the profile, see ``sp4sc bench train``), so here:

* :class:`PlusDepthwise` keeps oneDNN's depthwise forward on the assembled
  5x5 plus kernel and writes the backward itself:

  - input gradient: ``dL/dx = conv(dL/dy, flip(k))`` (a depthwise correlation
    with the kernel flipped in both axes; the plus kernel's flip is the plus
    kernel of the reversed 3-tap kernels);
  - weight gradient: one reduction per tap,
    ``g[c, (dt, df)] = sum_{b, t, f} dL/dy[b, c, t, f] * x[b, c, t + dt, f + df]``
    (x zero-padded), then mapped back to the two 3-tap kernels; the centre
    tap's sum goes to both kernels' centre weights.

* :func:`first_block_conv` handles a block whose input has one channel (the
  first block): the 1x1 conv from one channel times the plus kernel is five
  shifted copies of the input followed by a 1x1 conv (a GEMM) whose weights are
  the 1x1 weights times the five taps. Plain autograd differentiates it.

Both are exact reformulations (tests check float64 equality to 1e-9 for the
forward, the input and weight gradients and the BatchNorm statistics).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DIL = 2  # distance between the taps of each 3-tap kernel
# the five distinct taps of the plus kernel as (time offset, mel offset)
TAP_OFFSETS = ((-DIL, 0), (0, 0), (DIL, 0), (0, -DIL), (0, DIL))


def plus_kernel(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """``(C, 1, 5, 5)`` plus kernel from the time kernel ``w1 (C, 1, 3, 1)`` and the mel kernel ``w2 (C, 1, 1, 3)``."""
    k = w1.new_zeros((w1.shape[0], 1, 2 * DIL + 1, 2 * DIL + 1))
    k[:, :, ::DIL, DIL] = w1[:, :, :, 0]
    k[:, :, DIL, ::DIL] += w2[:, :, 0, :]
    return k


def five_taps(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """``(C, 5)`` distinct taps in :data:`TAP_OFFSETS` order (centre = sum of both centres)."""
    t = w1[:, 0, :, 0]  # (C, 3): time offsets -2, 0, +2
    m = w2[:, 0, 0, :]  # (C, 3): mel offsets -2, 0, +2
    return torch.stack((t[:, 0], t[:, 1] + m[:, 1], t[:, 2], m[:, 0], m[:, 2]), dim=1)


def _tap_grads(gy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(C, 5)``: per channel, sum over (batch, time, mel) of ``gy * x`` shifted by each tap."""
    frames, mels = x.shape[2], x.shape[3]
    xp = F.pad(x, (DIL, DIL, DIL, DIL))  # (B, C, T + 4, F + 4), zeros outside
    out = []
    for dt, df in TAP_OFFSETS:
        xs = xp[:, :, DIL + dt: DIL + dt + frames, DIL + df: DIL + df + mels]  # x[b, c, t + dt, f + df]
        out.append((gy * xs).sum(dim=(0, 2, 3)))  # (C,)
    return torch.stack(out, dim=1)  # (C, 5)


class PlusDepthwise(torch.autograd.Function):
    """``y = depthwise_conv(x, plus_kernel(w1, w2))`` (padding 2) with a hand-written backward.

    Forward: oneDNN's depthwise conv with the assembled plus kernel. Backward
    (see the module docstring): the input gradient is a depthwise conv of the
    output gradient with the flipped kernel; the weight gradient is five
    per-channel reductions, ``g_k = sum gy * shift_k(x)``, returned as
    ``dL/dw1 = (g_-2t, g_0, g_+2t)`` and ``dL/dw2 = (g_-2f, g_0, g_+2f)``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        # x: (B, C, T, F); w1: (C, 1, 3, 1); w2: (C, 1, 1, 3)
        ctx.save_for_backward(x, w1, w2)
        k = plus_kernel(w1, w2)  # (C, 1, 5, 5)
        return F.conv2d(x, k, padding=DIL, groups=k.shape[0])  # (B, C, T, F)

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        x, w1, w2 = ctx.saved_tensors
        gx = gw1 = gw2 = None
        if ctx.needs_input_grad[0]:
            k = plus_kernel(w1, w2).flip(2, 3)  # (C, 1, 5, 5): correlation's adjoint
            gx = F.conv2d(gy, k.to(gy.dtype), padding=DIL, groups=k.shape[0])  # (B, C, T, F)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            g = _tap_grads(gy, x.to(gy.dtype)).to(w1.dtype)  # (C, 5)
            gw1 = torch.stack((g[:, 0], g[:, 1], g[:, 2]), dim=1).view_as(w1)  # (C, 1, 3, 1)
            gw2 = torch.stack((g[:, 3], g[:, 1], g[:, 4]), dim=1).view_as(w2)  # (C, 1, 1, 3)
        return gx, gw1, gw2


def plus_depthwise(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """Depthwise conv of ``x`` with the plus kernel of ``w1`` and ``w2`` (custom backward)."""
    return PlusDepthwise.apply(x, w1, w2)


def first_block_conv(x: torch.Tensor, w_ch: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """1x1 conv from ONE input channel then the plus depthwise conv, as 5 shifts + a 1x1 conv.

    Args:
        x: ``(B, 1, T, F)``.
        w_ch: the 1x1 conv weight ``(C, 1, 1, 1)``.
        w1, w2: the time and mel 3-tap kernels.
        bias: optional ``(C,)`` bias (a folded block).

    Returns:
        ``(B, C, T, F)``; ``y[c] = sum_k w_ch[c] * tap_k[c] * shift_k(x)``.
    """
    frames, mels = x.shape[2], x.shape[3]
    xp = F.pad(x, (DIL, DIL, DIL, DIL))  # (B, 1, T + 4, F + 4)
    shifts = [xp[:, :, DIL + dt: DIL + dt + frames, DIL + df: DIL + df + mels] for dt, df in TAP_OFFSETS]
    x5 = torch.cat(shifts, dim=1)  # (B, 5, T, F)
    weight = (w_ch.view(-1, 1) * five_taps(w1, w2)).view(-1, len(TAP_OFFSETS), 1, 1)  # (C, 5, 1, 1)
    return F.conv2d(x5, weight, bias)  # (B, C, T, F)
