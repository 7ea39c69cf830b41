"""Pieces shared by the model families: input checks, the per-mel affine, BN folding maths, conv-BN-act blocks."""

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


class MelCNN(nn.Module):
    """What CNN6 and SP4SC share: input normalisation over mel bins, a stack of blocks that halve
    time and frequency, and the PANNs head (mean over frequency, max + mean over time, two
    fully connected layers). Subclasses give the block type and the state-dict names.

    Attributes:
        block_prefix: blocks are named ``f"{block_prefix}{i + 1}"`` (the published key names).
        head_name: name of the last fully connected layer (``fc_audioset`` in PANNs, ``fc2`` in SP4ASC).
    """

    block_prefix = "block"
    head_name = "fc"

    def _build_trunk(self, channels, n_classes: int, n_mels: int, dropout: float, folded: bool,
                     arch_name: str, arch_kwargs: dict, make_block) -> int:
        """Check the shape options, record the arch, build bn0, the blocks and the head; return the width."""
        channels = [int(c) for c in channels]
        if not channels or min(channels) <= 0:
            raise Sp4scError(f"{arch_name}: channels must be positive integers, got {channels}")
        if n_classes <= 0 or n_mels < 2 ** len(channels):
            raise Sp4scError(f"{arch_name}: need n_classes > 0 and n_mels >= {2 ** len(channels)}")
        self.arch_name = arch_name
        self.arch_kwargs = dict(arch_kwargs)
        self.n_mels = n_mels
        self.n_classes = n_classes
        self.bn0: nn.Module = MelAffine(n_mels) if folded else nn.BatchNorm2d(n_mels)
        self.block_names: tuple[str, ...] = tuple(f"{self.block_prefix}{i + 1}" for i in range(len(channels)))
        cin = 1
        for name, cout in zip(self.block_names, channels):
            self.add_module(name, make_block(cin, cout))
            cin = cout
        self.dropout1 = nn.Dropout(dropout)
        self.fc1 = nn.Linear(cin, cin)
        self.relu = nn.ReLU(inplace=True)
        self.dropout2 = nn.Dropout(dropout)
        self.add_module(self.head_name, nn.Linear(cin, n_classes))
        return cin

    @property
    def blocks(self) -> list[nn.Module]:
        return [getattr(self, name) for name in self.block_names]

    @property
    def min_frames(self) -> int:
        return 2 ** len(self.block_names)

    @property
    def folded(self) -> bool:
        return isinstance(self.bn0, MelAffine)

    @property
    def feature_dim(self) -> int:
        """Width of :meth:`features` (the input of the classifier head)."""
        return int(self.fc1.out_features)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The clip embedding the classifier head reads: ``(batch, 1, frames, mels)`` -> ``(batch, feature_dim)``."""
        check_input(x, self.n_mels, self.min_frames, self.arch_name)
        x = apply_mel_norm(self.bn0, x)  # (batch, 1, frames, mels)
        for block in self.blocks:
            x = block(x)  # (batch, channels, frames / 2**i, mels / 2**i)
        x = time_freq_head_pool(x)  # (batch, channels)
        x = self.dropout1(x)
        return self.relu(self.fc1(x))  # (batch, channels)

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(forward(x), features(x))`` from one pass (feature distillation reads both)."""
        f = self.features(x)  # (batch, channels)
        return getattr(self, self.head_name)(self.dropout2(f)), f  # (batch, n_classes), (batch, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (batch, 1, frames, mels) -> (batch, n_classes)
        return self.logits_and_features(x)[0]

    def fuse(self):
        """Fold every BatchNorm in place: input BN -> per-mel affine, block BNs -> conv bias."""
        if self.folded:
            raise Sp4scError(f"{self.arch_name}: model is already folded")
        self.bn0 = MelAffine.from_batchnorm(self.bn0)
        for block in self.blocks:
            block.fuse()
        self.arch_kwargs["folded"] = True
        return self


def build_variant(cls, name: str, channels: tuple[int, ...], kwargs: dict, defaults: dict):
    """A registered variant: ``kwargs`` checked against ``defaults``' keys and cast to their types."""
    unknown = sorted(set(kwargs) - set(defaults))
    if unknown:
        raise TypeError(f"unexpected options {unknown}; allowed: {sorted(defaults)}")
    opts = {key: type(default)(kwargs.get(key, default)) for key, default in defaults.items()}
    return cls(channels, **opts, arch_name=name, arch_kwargs=dict(opts))


class ConvBNAct(nn.Sequential):
    """``conv -> BatchNorm [-> activation]``, children ``0``, ``1``, ``2`` (torchvision's Conv2dNormActivation layout).

    CP-Mobile's and EfficientAT's MobileNetV3 building block; :meth:`fuse` folds the BatchNorm.

    Args:
        cin: input channels.
        cout: output channels.
        kernel: square kernel side; "same" padding ``(kernel - 1) // 2``.
        stride: int or (mel, time) pair.
        groups: convolution groups (``cin`` for depthwise).
        act: activation class (``nn.ReLU``, ``nn.Hardswish``) or None.
        folded: build the folded form (conv with bias, ``nn.Identity`` in place of the BatchNorm), as
            :meth:`fuse` leaves it.
        bn_eps: the BatchNorm's eps.
        bn_momentum: the BatchNorm's momentum.
    """

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride=1, groups: int = 1,
                 act: type[nn.Module] | None = None, folded: bool = False, bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=(kernel - 1) // 2, groups=groups, bias=folded),
            nn.Identity() if folded else nn.BatchNorm2d(cout, eps=bn_eps, momentum=bn_momentum),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)

    @property
    def conv(self) -> nn.Conv2d:
        return self[0]

    @property
    def folded(self) -> bool:
        return not isinstance(self[1], nn.BatchNorm2d)

    def fuse(self) -> "ConvBNAct":
        """Fold the BatchNorm into the conv's weight and a new bias, in place (BN's eps kept)."""
        if self.folded:
            raise Sp4scError(f"{type(self).__name__}.fuse: block is already folded")
        scale, shift = bn_scale_shift(self[1])
        fold_conv_bias(self[0], scale, shift)
        self[1] = nn.Identity()
        return self


def init_mobile_weights(model: nn.Module, linear_std: float | None = None) -> None:
    """The MobileNet initialisation CP-Mobile and EfficientAT share: Kaiming normal (fan-out) convs with
    zero biases, BatchNorm weight 1 and bias 0, and with ``linear_std`` N(0, std) linears with zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif linear_std is not None and isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)
