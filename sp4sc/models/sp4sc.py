"""SP4SC: the separable-convolution CNN6 of SP4ASC (Puy, Jain and Bursuc, DCASE 2021 Task 1A).

Faithful to ``Cnn6_60k`` in valeoai/SP4ASC ``sp4asc/models/cnns.py`` (facts read
from it; the code is ours). Input BatchNorm over the mel bins, then four
separable blocks (64-128-128-128 channels), each::

    1x1 conv (no bias) -> depthwise (3,1) conv, dilation (2,1), padding (2,0)
                        + depthwise (1,3) conv, dilation (1,2), padding (0,2)  (no bias)
                       -> BatchNorm -> ReLU -> 2x2 average pooling

and PANNs' head: mean over frequency, max + mean over time, dropout, fc 128->128,
ReLU, dropout, fc 128->n_classes. No dropout inside the blocks (as in SP4ASC).
State-dict keys are SP4ASC's (``bn0.*``, ``conv{i}.{ch_conv1,sp_conv1,sp_conv2,bn}.*``,
``fc1.*``, ``fc2.*``), so their checkpoints load strictly with no renaming.
For 10 classes and 256 mels: 64,335 state-dict values, 62,474 parameters once folded.

Training fast path (``fast=True``, same parameters and state dict): the two
3-tap dilated depthwise convolutions are computed as ONE depthwise 5x5
convolution whose plus-shaped kernel is assembled from the two kernels at every
call (so gradients flow to the same two parameters); in the first block the 1x1
conv from the single input channel is merged into that kernel too, making the
block's convolution one dense 1->C 5x5 conv.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sp4sc.errors import Sp4scError
from sp4sc.models import register_model
from sp4sc.models._common import MelCNN, bn_scale_shift, build_variant

DILATION = 2  # both depthwise kernels: 3 taps, 2 apart
TAPS = 3
PLUS = DILATION * (TAPS - 1) + 1  # 5: side of the plus-shaped kernel
PAD = DILATION * (TAPS - 1) // 2  # 2


class SepBlock(nn.Module):
    """SP4ASC's separable block: 1x1 conv, sum of two dilated depthwise convs, BN, ReLU, 2x2 avg pool.

    Args:
        cin: input channels.
        cout: output channels.
        fast: compute the two depthwise convs as one plus-shaped 5x5 depthwise conv
            (and, when ``cin == 1``, merge the 1x1 conv too). Same function, same parameters.
        folded: build the folded structure (no BN, a bias on ``sp_conv2``), as :meth:`fuse` leaves it.
    """

    def __init__(self, cin: int, cout: int, *, fast: bool = False, folded: bool = False):
        super().__init__()
        self.fast = fast
        self.cpu_path = False  # set by SP4SC.set_cpu_path: custom-backward taps (sp4sc.models.cpu_ops)
        self.ch_conv1 = nn.Conv2d(cin, cout, kernel_size=1, bias=False)
        self.sp_conv1 = nn.Conv2d(
            cout, cout, kernel_size=(TAPS, 1), padding=(PAD, 0), dilation=(DILATION, 1), groups=cout, bias=False
        )
        self.sp_conv2 = nn.Conv2d(
            cout, cout, kernel_size=(1, TAPS), padding=(0, PAD), dilation=(1, DILATION), groups=cout, bias=folded
        )
        self.bn: nn.Module = nn.Identity() if folded else nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AvgPool2d(2)

    @property
    def folded(self) -> bool:
        return not isinstance(self.bn, nn.BatchNorm2d)

    def plus_kernel(self) -> torch.Tensor:
        """The two depthwise kernels as one ``(cout, 1, 5, 5)`` plus-shaped kernel (differentiable)."""
        w1 = self.sp_conv1.weight  # (cout, 1, 3, 1): taps at time offsets -2, 0, +2
        w2 = self.sp_conv2.weight  # (cout, 1, 1, 3): taps at mel offsets -2, 0, +2
        k = w1.new_zeros((w1.shape[0], 1, PLUS, PLUS))
        k[:, :, ::DILATION, PAD] = w1[:, :, :, 0]
        k[:, :, PAD, ::DILATION] += w2[:, :, 0, :]
        return k

    def _conv_fast(self, x: torch.Tensor) -> torch.Tensor:
        k = self.plus_kernel()  # (cout, 1, 5, 5)
        bias = self.sp_conv2.bias
        if self.ch_conv1.in_channels == 1:
            # y_c = w_c * x, then depthwise k_c: one dense 1 -> cout conv with kernel w_c * k_c.
            merged = k * self.ch_conv1.weight  # (cout, 1, 5, 5) * (cout, 1, 1, 1)
            return F.conv2d(x, merged, bias, padding=PAD)  # (batch, cout, frames, mels)
        x = self.ch_conv1(x)  # (batch, cout, frames, mels)
        return F.conv2d(x, k, bias, padding=PAD, groups=k.shape[0])  # (batch, cout, frames, mels)

    def _conv_cpu(self, x: torch.Tensor) -> torch.Tensor:
        from sp4sc.models import cpu_ops

        w1, w2, bias = self.sp_conv1.weight, self.sp_conv2.weight, self.sp_conv2.bias
        if self.ch_conv1.in_channels == 1:
            return cpu_ops.first_block_conv(x, self.ch_conv1.weight, w1, w2, bias)  # (batch, cout, frames, mels)
        x = self.ch_conv1(x)  # (batch, cout, frames, mels)
        x = cpu_ops.plus_depthwise(x, w1, w2)  # (batch, cout, frames, mels)
        return x if bias is None else x + bias.view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (batch, cin, frames, mels)
        if self.cpu_path:
            x = self._conv_cpu(x)  # (batch, cout, frames, mels)
        elif self.fast:
            x = self._conv_fast(x)  # (batch, cout, frames, mels)
        else:
            x = self.ch_conv1(x)  # (batch, cout, frames, mels)
            x = self.sp_conv1(x) + self.sp_conv2(x)  # (batch, cout, frames, mels)
        x = self.bn(x)
        x = self.relu(x)
        return self.pool(x)  # (batch, cout, frames // 2, mels // 2)

    def fuse(self) -> "SepBlock":
        """Fold the BN (which follows the sum of the two depthwise convs) into both kernels and one bias.

        In place; BN's eps is kept. ``BN(a + b) = s*a + s*b + t`` with ``s`` per channel,
        so both depthwise kernels are scaled by ``s`` and ``t`` becomes ``sp_conv2``'s bias.
        """
        if self.folded:
            raise Sp4scError("SepBlock.fuse: block is already folded")
        scale, shift = bn_scale_shift(self.bn)
        with torch.no_grad():
            for conv in (self.sp_conv1, self.sp_conv2):
                w = conv.weight.detach().double() * scale.view(-1, 1, 1, 1)
                conv.weight.copy_(w.to(conv.weight.dtype))
            self.sp_conv2.bias = nn.Parameter(shift.to(self.sp_conv2.weight.dtype))
        self.bn = nn.Identity()
        return self


class SP4SC(MelCNN):
    """SP4ASC's Cnn6_60k and its width/depth variants.

    Args:
        channels: output channels of each separable block (its length is the depth).
        n_classes: number of classes.
        n_mels: mel bins of the input (256 for the ``sp4asc`` front end).
        dropout: dropout before each fully connected layer of the head (SP4ASC: 0.2).
        fast: training fast path (see the module docstring); no effect on parameters or state dict.
        folded: build the folded structure directly (what :func:`sp4sc.models.fold.fold_batchnorm` returns).
        arch_name: registry name recorded in :attr:`arch_name`.

    Input ``(batch, 1, frames, n_mels)`` log-mels, any ``frames >= 2**depth``; output logits ``(batch, n_classes)``.
    """

    block_prefix = "conv"
    head_name = "fc2"

    def __init__(
        self,
        channels: Sequence[int] = (64, 128, 128, 128),
        n_classes: int = 10,
        n_mels: int = 256,
        dropout: float = 0.2,
        fast: bool = False,
        folded: bool = False,
        *,
        arch_name: str = "sp4sc",
        arch_kwargs: dict | None = None,
    ):
        super().__init__()
        if arch_kwargs is None:
            arch_kwargs = {"channels": [int(c) for c in channels], "n_classes": n_classes, "n_mels": n_mels,
                           "dropout": dropout, "fast": fast, "folded": folded}
        self._build_trunk(channels, n_classes, n_mels, dropout, folded, arch_name, arch_kwargs,
                          lambda cin, cout: SepBlock(cin, cout, fast=fast, folded=folded))

    def set_fast(self, fast: bool = True) -> "SP4SC":
        """Switch the training fast path on or off (parameters are shared, nothing is copied)."""
        for block in self.blocks:
            block.fast = fast
        self.arch_kwargs["fast"] = fast
        return self

    def set_cpu_path(self, on: bool = True) -> "SP4SC":
        """Switch the CPU training path on or off (:mod:`sp4sc.models.cpu_ops`: the depthwise taps with a
        hand-written backward, the first block as five shifts and a GEMM). Same function and parameters;
        the state dict and ``arch_kwargs`` do not change."""
        for block in self.blocks:
            block.cpu_path = bool(on)
        return self


def _build(name: str, channels: tuple[int, ...], kwargs: dict) -> SP4SC:
    defaults = {"n_classes": 10, "n_mels": 256, "dropout": 0.2, "fast": False, "folded": False}
    return build_variant(SP4SC, name, channels, kwargs, defaults)


@register_model("sp4sc", frontend="sp4asc", description="SP4ASC Cnn6_60k, 64-128-128-128 (62,474 folded params)")
def sp4sc(**kwargs) -> SP4SC:
    return _build("sp4sc", (64, 128, 128, 128), kwargs)


@register_model("sp4sc_w32", frontend="sp4asc", description="SP4SC at half width, 32-64-64-64")
def sp4sc_w32(**kwargs) -> SP4SC:
    return _build("sp4sc_w32", (32, 64, 64, 64), kwargs)


@register_model("sp4sc_w48", frontend="sp4asc", description="SP4SC at 3/4 width, 48-96-96-96")
def sp4sc_w48(**kwargs) -> SP4SC:
    return _build("sp4sc_w48", (48, 96, 96, 96), kwargs)


@register_model("sp4sc_w96", frontend="sp4asc", description="SP4SC at 3/2 width, 96-192-192-192 (over the 2021 budget)")
def sp4sc_w96(**kwargs) -> SP4SC:
    return _build("sp4sc_w96", (96, 192, 192, 192), kwargs)


@register_model("sp4sc_w84", frontend="sp4asc", description="SP4SC at 84-168-168-168: fits 128 kB at int8 only "
                "(111,858 params at 50 classes, 122,972 B as stored at int8, 223,716 B at fp16)")
def sp4sc_w84(**kwargs) -> SP4SC:
    return _build("sp4sc_w84", (84, 168, 168, 168), kwargs)


@register_model("sp4sc_d3", frontend="sp4asc", description="SP4SC with 3 blocks, 64-128-128")
def sp4sc_d3(**kwargs) -> SP4SC:
    return _build("sp4sc_d3", (64, 128, 128), kwargs)


@register_model("sp4sc_d5", frontend="sp4asc", description="SP4SC with 5 blocks, 64-128-128-128-128")
def sp4sc_d5(**kwargs) -> SP4SC:
    return _build("sp4sc_d5", (64, 128, 128, 128, 128), kwargs)
