"""CP-Mobile: the inverted-bottleneck CNN of Schmid et al. (DCASE 2023), as the DCASE 2024 Task 1 baseline.

Faithful to the simplified CP-Mobile of CPJKU/dcase2024_task1_baseline
(``models/baseline.py``; the facts are read from it, the code is ours). On a
log-mel input laid out ``(batch, 1, mels, frames)``:

- stem ``in_c``: two 3x3 conv -> BN -> ReLU layers, stride 2 each, to ``base // 4``
  then ``base`` channels (no conv bias);
- stages of inverted-bottleneck blocks (``n_blocks`` per stage, numbered b1, b2, ...
  across stages): 1x1 conv to ``make_divisible(cin * expansion_rate, 8)`` channels
  -> BN -> ReLU, 3x3 depthwise conv (the block's stride) -> BN -> ReLU, 1x1 conv to
  ``cout`` -> BN; plus a shortcut when ``cin == cout`` (identity, or 3x3 average
  pooling with padding 1 when strided); then ReLU;
- stage widths ``make_divisible(base * channels_multiplier ** s, 8)``, s = 0, 1, ...;
- head ``feed_forward``: 1x1 conv to the classes (no bias) -> BN -> global average pooling.

Strides are given on (mel, time): the baseline's are b2 (1, 1), b3 (1, 2), b4 (2, 1).
Our models take ``(batch, 1, frames, mels)``; :class:`CPMobile` transposes to the
baseline's ``(mels, frames)`` layout first, so every convolution has the baseline's
shape, stride and groups, and the state-dict keys are the baseline's
(``in_c.0.0.weight``, ``stages.s1.b1.block.0.1.running_var``, ``feed_forward.1.weight``, ...).

The DCASE 2024 baseline (``cpmobile``: base 32, multiplier 1.8, expansion 2.1,
blocks (3, 2, 1)) has 61,148 parameters and 29,419,156 MACs on a 256 x 65 input
(the ``dcase2024`` front end, 1 s) counted as NeSsi counts them
(:func:`sp4sc.deploy.complexity.macs_nessi`).

Input scale: our log-mels are in dB (``10 log10 P``); the baseline feeds ``ln(P + 1e-5)``.
The model multiplies its input by ``ln(10) / 10`` (a constant, not a parameter) so that
its first convolution sees the baseline's natural-log scale. There is no input
normalisation layer (the baseline has none), so the parameter count is the baseline's.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import nn

from sp4sc.errors import Sp4scError
from sp4sc.models import register_model
from sp4sc.models._common import ConvBNAct, bn_scale_shift, check_input, fold_conv_bias, init_mobile_weights

DB_TO_LN = math.log(10.0) / 10.0  # dB -> natural-log units: 10 log10 P * ln(10)/10 = ln P

# The DCASE 2024 baseline's strides on (mel, time), by global block name.
BASELINE_STRIDES: dict[str, tuple[int, int]] = {"b2": (1, 1), "b3": (1, 2), "b4": (2, 1)}


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (at least ``divisor``), never more than 10 % down.

    The channel rounding of MobileNet v2/v3, which the CP-Mobile baseline uses.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return int(rounded)


def ConvNormAct(cin: int, cout: int, kernel_size: int = 3, stride=1, groups: int = 1, *, act: bool = True,
                folded: bool = False) -> ConvBNAct:
    """CP-Mobile's ``conv -> BatchNorm [-> ReLU]`` (:class:`~sp4sc.models._common.ConvBNAct`, PyTorch's BN defaults)."""
    return ConvBNAct(cin, cout, kernel_size, stride=stride, groups=groups, act=nn.ReLU if act else None, folded=folded)


class InvertedBottleneck(nn.Module):
    """CP-Mobile's block: 1x1 expand, 3x3 depthwise (strided), 1x1 project, shortcut when widths match, ReLU.

    Args:
        cin: input channels.
        cout: output channels.
        expansion_rate: expanded width is ``make_divisible(cin * expansion_rate, 8)``.
        stride: (mel, time) stride of the depthwise conv (and of the shortcut's average pooling).
        folded: build the folded form.
    """

    def __init__(self, cin: int, cout: int, expansion_rate: float, stride: tuple[int, int], *, folded: bool = False):
        super().__init__()
        exp = make_divisible(cin * expansion_rate, 8)
        stride = (int(stride[0]), int(stride[1]))
        self.block = nn.Sequential(
            ConvNormAct(cin, exp, 1, folded=folded),
            ConvNormAct(exp, exp, 3, stride=stride, groups=exp, folded=folded),
            ConvNormAct(exp, cout, 1, act=False, folded=folded),
        )
        self.use_shortcut = cin == cout
        if self.use_shortcut and stride != (1, 1):
            self.shortcut: nn.Module = nn.AvgPool2d(kernel_size=3, stride=stride, padding=1)
        else:
            self.shortcut = nn.Identity()
        self.after_block_activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (batch, cin, mels, frames)
        y = self.block(x)  # (batch, cout, mels / s_mel, frames / s_time)
        if self.use_shortcut:
            y = y + self.shortcut(x)
        return self.after_block_activation(y)

    def fuse(self) -> "InvertedBottleneck":
        """Fold the three BatchNorms into their convs, in place."""
        for layer in self.block:
            layer.fuse()
        return self


class CPMobile(nn.Module):
    """CP-Mobile (DCASE 2024 Task 1 baseline form) and its width variants.

    Args:
        n_classes: number of classes.
        n_mels: mel bins of the input (256 for the ``dcase2024`` front end); any value works,
            it is checked against the input.
        base_channels: stem width (rounded to a multiple of 8); the stem's first conv has a quarter of it.
        channels_multiplier: width growth per stage.
        expansion_rate: inverted-bottleneck expansion.
        n_blocks: blocks per stage.
        strides: (mel, time) stride of blocks by global name (``"b3": (1, 2)``); others stride 1.
            Default: the baseline's.
        folded: build the folded structure directly (what :func:`sp4sc.models.fold.fold_batchnorm` returns).
        arch_name: registry name recorded in :attr:`arch_name`.
        arch_kwargs: what :func:`sp4sc.models.create_model` needs to rebuild it.

    Input ``(batch, 1, frames, n_mels)`` log-mels in dB, any ``frames >= 1``; output logits ``(batch, n_classes)``.
    """

    def __init__(
        self,
        n_classes: int = 10,
        n_mels: int = 256,
        base_channels: int = 32,
        channels_multiplier: float = 1.8,
        expansion_rate: float = 2.1,
        n_blocks: Sequence[int] = (3, 2, 1),
        strides: Mapping[str, Sequence[int]] | None = None,
        folded: bool = False,
        *,
        arch_name: str = "cpmobile",
        arch_kwargs: dict | None = None,
    ):
        super().__init__()
        n_blocks = tuple(int(n) for n in n_blocks)
        strides = dict(BASELINE_STRIDES if strides is None else strides)
        if n_classes <= 0 or n_mels <= 0 or base_channels < 4 or not n_blocks or min(n_blocks) <= 0:
            raise Sp4scError(f"{arch_name}: need n_classes > 0, n_mels > 0, base_channels >= 4 and "
                             f"positive blocks per stage, got {n_classes}, {n_mels}, {base_channels}, {n_blocks}")
        known = {f"b{i + 1}" for i in range(sum(n_blocks))}
        if set(strides) - known:
            raise Sp4scError(f"{arch_name}: strides for unknown blocks {sorted(set(strides) - known)}; "
                             f"blocks are {sorted(known, key=lambda b: int(b[1:]))}")
        self.arch_name = arch_name
        self.arch_kwargs = dict(arch_kwargs) if arch_kwargs is not None else {
            "n_classes": n_classes, "n_mels": n_mels, "base_channels": base_channels,
            "channels_multiplier": channels_multiplier, "expansion_rate": expansion_rate,
            "n_blocks": list(n_blocks), "strides": {k: [int(v[0]), int(v[1])] for k, v in strides.items()},
            "folded": folded,
        }
        self.n_classes = n_classes
        self.n_mels = n_mels
        base = make_divisible(base_channels, 8)
        widths = [base] + [make_divisible(base * channels_multiplier ** s, 8) for s in range(len(n_blocks))]
        self.in_c = nn.Sequential(
            ConvNormAct(1, base // 4, 3, stride=2, folded=folded),
            ConvNormAct(base // 4, base, 3, stride=2, folded=folded),
        )
        self.stages = nn.Sequential()
        index = 0
        for s, count in enumerate(n_blocks):
            stage = nn.Sequential()
            cin = widths[s]
            for _ in range(count):
                index += 1
                name = f"b{index}"
                stride = tuple(strides.get(name, (1, 1)))
                stage.add_module(name, InvertedBottleneck(cin, widths[s + 1], expansion_rate, stride, folded=folded))
                cin = widths[s + 1]
            self.stages.add_module(f"s{s + 1}", stage)
        self.feed_forward = nn.Sequential(
            nn.Conv2d(widths[-1], n_classes, kernel_size=1, bias=folded),
            nn.Identity() if folded else nn.BatchNorm2d(n_classes),
            nn.AdaptiveAvgPool2d((1, 1)),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        init_mobile_weights(self)  # the baseline's: Kaiming normal (fan_out) convs, BN weight 1 and bias 0

    @property
    def blocks(self) -> list[InvertedBottleneck]:
        return [b for stage in self.stages for b in stage]

    @property
    def min_frames(self) -> int:
        return 1  # every conv and pool is padded: one frame still gives one output position

    @property
    def folded(self) -> bool:
        return not isinstance(self.feed_forward[1], nn.BatchNorm2d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (batch, 1, frames, mels) -> (batch, n_classes)
        check_input(x, self.n_mels, self.min_frames, self.arch_name)
        x = x.transpose(2, 3) * DB_TO_LN  # (batch, 1, mels, frames): the baseline's layout and log scale
        x = self.in_c(x)  # (batch, base, mels / 4, frames / 4)
        x = self.stages(x)  # (batch, widths[-1], mels / 8, frames / 8) with the baseline's strides
        x = self.feed_forward(x)  # (batch, n_classes, 1, 1)
        return x.flatten(1)  # (batch, n_classes)

    def fuse(self) -> "CPMobile":
        """Fold every BatchNorm in place: stem and block BNs into their convs, the head BN into the 1x1 conv."""
        if self.folded:
            raise Sp4scError(f"{self.arch_name}: model is already folded")
        for layer in self.in_c:
            layer.fuse()
        for block in self.blocks:
            block.fuse()
        scale, shift = bn_scale_shift(self.feed_forward[1])
        fold_conv_bias(self.feed_forward[0], scale, shift)
        self.feed_forward[1] = nn.Identity()
        self.arch_kwargs["folded"] = True
        return self


def _build(name: str, arch: dict, kwargs: dict) -> CPMobile:
    """A registered variant: the architecture is the variant's; only classes, mel bins and ``folded`` vary."""
    defaults = {"n_classes": 10, "n_mels": 256, "folded": False}
    unknown = sorted(set(kwargs) - set(defaults))
    if unknown:
        raise TypeError(f"unexpected options {unknown}; allowed: {sorted(defaults)}")
    opts = {key: type(default)(kwargs.get(key, default)) for key, default in defaults.items()}
    return CPMobile(**opts, **arch, arch_name=name, arch_kwargs=dict(opts))


_BASELINE = {"base_channels": 32, "channels_multiplier": 1.8, "expansion_rate": 2.1, "n_blocks": (3, 2, 1)}


@register_model("cpmobile", frontend="dcase2024",
                description="CP-Mobile, the DCASE 2024 Task 1 baseline (61,148 params, 29.42 M NeSsi MACs per 1 s)")
def cpmobile(**kwargs) -> CPMobile:
    return _build("cpmobile", _BASELINE, kwargs)


@register_model("cpmobile_w24", frontend="dcase2024",
                description="CP-Mobile with a 24-channel stem (35,062 params, 16.86 M NeSsi MACs per 1 s)")
def cpmobile_w24(**kwargs) -> CPMobile:
    return _build("cpmobile_w24", {**_BASELINE, "base_channels": 24}, kwargs)


@register_model("cpmobile_w16", frontend="dcase2024",
                description="CP-Mobile with a 16-channel stem (18,624 params, 8.45 M NeSsi MACs per 1 s)")
def cpmobile_w16(**kwargs) -> CPMobile:
    return _build("cpmobile_w16", {**_BASELINE, "base_channels": 16}, kwargs)


@register_model("cpmobile_128k", frontend="dcase2024",
                description="CP-Mobile for 128 kB at int8: multiplier 2.3, expansion 3.0 (126,940 params, "
                            "53.17 M NeSsi MACs per 1 s: over the 30 M MAC limit at the dcase2024 front end)")
def cpmobile_128k(**kwargs) -> CPMobile:
    return _build("cpmobile_128k", {**_BASELINE, "channels_multiplier": 2.3, "expansion_rate": 3.0}, kwargs)
