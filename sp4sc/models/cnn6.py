"""CNN6 of PANNs (Kong et al., 2020), as published in qiuqiangkong/audioset_tagging_cnn ``pytorch/models.py``.

Facts from the paper's code (the code here is ours): input BatchNorm over the mel
bins; four blocks of 5x5 conv (no bias, padding 2) -> BN -> ReLU -> 2x2 average
pooling -> dropout 0.2, channels 64-128-256-512; head: mean over frequency, max +
mean over time, dropout 0.5, fc 512->512 + ReLU, dropout 0.5, fc 512->n_classes.
Xavier-uniform init of convs and linears, zero biases, BN weight 1 / bias 0.
State-dict keys follow PANNs (``bn0``, ``conv_block{i}.conv1``, ``conv_block{i}.bn1``,
``fc1``, ``fc_audioset``). The front end (STFT, mel) is not part of the model.
For 10 classes and 64 mels: 4,572,234 parameters, 4,574,287 state-dict values.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from sp4sc.errors import Sp4scError
from sp4sc.models import register_model
from sp4sc.models._common import (
    MelAffine,
    apply_mel_norm,
    bn_scale_shift,
    check_input,
    fold_conv_bias,
    time_freq_head_pool,
)


def _init_layer(layer: nn.Module) -> None:
    nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class ConvBlock5x5(nn.Module):
    """5x5 conv (no bias) -> BN -> ReLU -> 2x2 average pooling -> dropout.

    Args:
        cin: input channels.
        cout: output channels.
        dropout: dropout after pooling (PANNs: 0.2).
        folded: build the folded structure (conv with bias, no BN).
    """

    def __init__(self, cin: int, cout: int, *, dropout: float = 0.2, folded: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, kernel_size=5, padding=2, bias=folded)
        self.bn1: nn.Module = nn.Identity() if folded else nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AvgPool2d(2)
        self.dropout = nn.Dropout(dropout)
        _init_layer(self.conv1)

    @property
    def folded(self) -> bool:
        return not isinstance(self.bn1, nn.BatchNorm2d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (batch, cin, frames, mels)
        x = self.relu(self.bn1(self.conv1(x)))  # (batch, cout, frames, mels)
        x = self.pool(x)  # (batch, cout, frames // 2, mels // 2)
        return self.dropout(x)

    def fuse(self) -> "ConvBlock5x5":
        """Fold the BN into the conv's weight and a new bias, in place (BN's eps kept)."""
        if self.folded:
            raise Sp4scError("ConvBlock5x5.fuse: block is already folded")
        scale, shift = bn_scale_shift(self.bn1)
        fold_conv_bias(self.conv1, scale, shift)
        self.bn1 = nn.Identity()
        return self


class CNN6(nn.Module):
    """PANNs CNN6 on log-mels.

    Args:
        channels: output channels of the conv blocks.
        n_classes: number of classes.
        n_mels: mel bins of the input (64 for the ``panns`` front end).
        dropout: dropout of the head (PANNs: 0.5).
        block_dropout: dropout after each conv block (PANNs: 0.2).
        folded: build the folded structure directly.
        arch_name: registry name recorded in :attr:`arch_name`.

    Input ``(batch, 1, frames, n_mels)``, any ``frames >= 2**depth``; output logits ``(batch, n_classes)``.
    """

    def __init__(
        self,
        channels: Sequence[int] = (64, 128, 256, 512),
        n_classes: int = 10,
        n_mels: int = 64,
        dropout: float = 0.5,
        block_dropout: float = 0.2,
        folded: bool = False,
        *,
        arch_name: str = "cnn6",
        arch_kwargs: dict | None = None,
    ):
        super().__init__()
        channels = [int(c) for c in channels]
        if not channels or min(channels) <= 0:
            raise Sp4scError(f"{arch_name}: channels must be positive integers, got {channels}")
        if n_classes <= 0 or n_mels < 2 ** len(channels):
            raise Sp4scError(f"{arch_name}: need n_classes > 0 and n_mels >= {2 ** len(channels)}")
        self.arch_name = arch_name
        self.arch_kwargs = dict(arch_kwargs) if arch_kwargs is not None else {
            "channels": channels, "n_classes": n_classes, "n_mels": n_mels, "dropout": dropout,
            "block_dropout": block_dropout, "folded": folded,
        }
        self.n_mels = n_mels
        self.n_classes = n_classes
        self.bn0: nn.Module = MelAffine(n_mels) if folded else nn.BatchNorm2d(n_mels)
        self.block_names: tuple[str, ...] = tuple(f"conv_block{i + 1}" for i in range(len(channels)))
        cin = 1
        for name, cout in zip(self.block_names, channels):
            self.add_module(name, ConvBlock5x5(cin, cout, dropout=block_dropout, folded=folded))
            cin = cout
        self.dropout1 = nn.Dropout(dropout)
        self.fc1 = nn.Linear(cin, cin)
        self.relu = nn.ReLU(inplace=True)
        self.dropout2 = nn.Dropout(dropout)
        self.fc_audioset = nn.Linear(cin, n_classes)
        _init_layer(self.fc1)
        _init_layer(self.fc_audioset)

    @property
    def blocks(self) -> list[ConvBlock5x5]:
        return [getattr(self, name) for name in self.block_names]

    @property
    def min_frames(self) -> int:
        return 2 ** len(self.block_names)

    @property
    def folded(self) -> bool:
        return isinstance(self.bn0, MelAffine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.n_mels, self.min_frames, self.arch_name)
        # (batch, 1, frames, mels)
        x = apply_mel_norm(self.bn0, x)  # (batch, 1, frames, mels)
        for block in self.blocks:
            x = block(x)  # (batch, channels, frames / 2**i, mels / 2**i)
        x = time_freq_head_pool(x)  # (batch, channels)
        x = self.dropout1(x)
        x = self.relu(self.fc1(x))  # (batch, channels)
        x = self.dropout2(x)
        return self.fc_audioset(x)  # (batch, n_classes)

    def fuse(self) -> "CNN6":
        """Fold every BatchNorm in place: input BN -> per-mel affine, block BNs -> conv bias."""
        if self.folded:
            raise Sp4scError(f"{self.arch_name}: model is already folded")
        self.bn0 = MelAffine.from_batchnorm(self.bn0)
        for block in self.blocks:
            block.fuse()
        self.arch_kwargs["folded"] = True
        return self


def _build(name: str, channels: tuple[int, ...], kwargs: dict) -> CNN6:
    allowed = {"n_classes", "n_mels", "dropout", "block_dropout", "folded"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(f"unexpected options {unknown}; allowed: {sorted(allowed)}")
    opts = {"n_classes": 10, "n_mels": 64, "dropout": 0.5, "block_dropout": 0.2, "folded": False}
    opts.update(kwargs)
    opts = {"n_classes": int(opts["n_classes"]), "n_mels": int(opts["n_mels"]), "dropout": float(opts["dropout"]),
            "block_dropout": float(opts["block_dropout"]), "folded": bool(opts["folded"])}
    return CNN6(channels, **opts, arch_name=name, arch_kwargs=dict(opts))


@register_model("cnn6", frontend="panns", description="PANNs CNN6, 64-128-256-512 (4.57 M params)")
def cnn6(**kwargs) -> CNN6:
    return _build("cnn6", (64, 128, 256, 512), kwargs)


@register_model("cnn6_w16", frontend="panns", description="CNN6 at 1/4 width, 16-32-64-128 (about 290 k params)")
def cnn6_w16(**kwargs) -> CNN6:
    return _build("cnn6_w16", (16, 32, 64, 128), kwargs)
