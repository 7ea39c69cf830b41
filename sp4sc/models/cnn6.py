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
from sp4sc.models._common import MelCNN, bn_scale_shift, build_variant, fold_conv_bias


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


class CNN6(MelCNN):
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

    block_prefix = "conv_block"
    head_name = "fc_audioset"

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
        if arch_kwargs is None:
            arch_kwargs = {"channels": [int(c) for c in channels], "n_classes": n_classes, "n_mels": n_mels,
                           "dropout": dropout, "block_dropout": block_dropout, "folded": folded}
        self._build_trunk(channels, n_classes, n_mels, dropout, folded, arch_name, arch_kwargs,
                          lambda cin, cout: ConvBlock5x5(cin, cout, dropout=block_dropout, folded=folded))
        _init_layer(self.fc1)
        _init_layer(self.fc_audioset)


def _build(name: str, channels: tuple[int, ...], kwargs: dict) -> CNN6:
    defaults = {"n_classes": 10, "n_mels": 64, "dropout": 0.5, "block_dropout": 0.2, "folded": False}
    return build_variant(CNN6, name, channels, kwargs, defaults)


@register_model("cnn6", frontend="panns", description="PANNs CNN6, 64-128-256-512 (4.57 M params)")
def cnn6(**kwargs) -> CNN6:
    return _build("cnn6", (64, 128, 256, 512), kwargs)


@register_model("cnn6_w16", frontend="panns", description="CNN6 at 1/4 width, 16-32-64-128 (about 290 k params)")
def cnn6_w16(**kwargs) -> CNN6:
    return _build("cnn6_w16", (16, 32, 64, 128), kwargs)
