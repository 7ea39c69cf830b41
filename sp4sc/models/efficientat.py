"""EfficientAT MobileNets (Schmid, Koutini, Widmer, ICASSP 2023) as trainable backbones, in our own code.

The network is the MobileNetV3-Large inverted-residual stack scaled by a width
multiplier, with channel squeeze-excitation, trained on AudioSet by knowledge
distillation from PaSST ensembles (public repository fschmid56/EfficientAT,
MIT licence). It is re-implemented here from the published facts (layer table,
channel rounding, BatchNorm settings, state-dict key names) so that the released
state dicts (e.g. ``mn04_as_mAP_432.pt``) load strictly, key for key:

* ``features.0``: stem conv 3 x 3 / 2 + BN + hardswish,
* ``features.1`` ... ``features.15``: inverted residual blocks, each a
  ``block`` Sequential of [expand 1 x 1] -> depthwise k x k -> [SE] -> project 1 x 1,
  every conv followed by BN (``<i>.0`` conv, ``<i>.1`` BN); the SE gate sits
  under ``conc_se_layers.0`` (EfficientAT's "concurrent SE" with only the
  channel branch, whose max-fusion over one branch is the branch itself),
* ``features.16``: 1 x 1 conv to 6 x the last block's channels + BN + hardswish,
* ``classifier``: avg-pool, flatten, ``classifier.2`` linear, hardswish,
  dropout, ``classifier.5`` linear to 527 AudioSet logits.

The embedding is the global average over frequency and time of the
``features.16`` map (384-d for mn04), the vector EfficientAT's forward returns
beside the logits.

Two users:

* :class:`EfficientATMobileNet` (log-mels ``(batch, 1, mels, frames)`` -> AudioSet logits and
  embedding): the frozen encoder of :mod:`sp4sc.probes.efficientat`;
* :class:`EfficientATClassifier`, registered as ``efficientat_mn04`` (and the other widths):
  the same network as a classifier backbone of the training pipeline. It takes our
  log-mel layout ``(batch, 1, frames, mels)`` from the ``efficientat32k`` front end
  (:mod:`sp4sc.frontend.efficientat_mel`: EfficientAT's own features, which no
  Slaney/dB preset reproduces), starts from the AudioSet weights given as
  ``pretrained=PATH`` (read with ``weights_only=True``, loaded strictly) and replaces
  the 527-way ``classifier.5`` by a fresh ``n_classes``-way layer, as EfficientAT's
  ``ex_esc50.py`` fine-tuning does. Before any training step its embedding equals the
  frozen encoder's on the same audio (``tests/test_efficientat_backbone.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from sp4sc.errors import Sp4scError
from sp4sc.models import register_model
from sp4sc.models._common import ConvBNAct, check_input, init_mobile_weights

# Width multipliers of the published EfficientAT names (helpers/utils.py NAME_TO_WIDTH).
WIDTHS: dict[str, float] = {
    "mn01": 0.1, "mn02": 0.2, "mn04": 0.4, "mn05": 0.5, "mn06": 0.6, "mn08": 0.8, "mn10": 1.0,
    "mn12": 1.2, "mn14": 1.4, "mn16": 1.6, "mn20": 2.0, "mn30": 3.0, "mn40": 4.0,
}

# MobileNetV3-Large bottlenecks at width 1.0 (Howard et al. 2019, Table 1; EfficientAT
# keeps it with strides (2, 2, 2, 2) at the four down-sampling rows):
# (input channels, kernel, expanded channels, output channels, squeeze-excitation, hardswish, stride)
MOBILENET_V3_LARGE: tuple[tuple[int, int, int, int, bool, bool, int], ...] = (
    (16, 3, 16, 16, False, False, 1),
    (16, 3, 64, 24, False, False, 2),
    (24, 3, 72, 24, False, False, 1),
    (24, 5, 72, 40, True, False, 2),
    (40, 5, 120, 40, True, False, 1),
    (40, 5, 120, 40, True, False, 1),
    (40, 3, 240, 80, False, True, 2),
    (80, 3, 200, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1),
    (80, 3, 480, 112, True, True, 1),
    (112, 3, 672, 112, True, True, 1),
    (112, 5, 672, 160, True, True, 2),
    (160, 5, 960, 160, True, True, 1),
    (160, 5, 960, 160, True, True, 1),
)
HEAD_HIDDEN = 1280  # width of the MLP head's hidden layer at width 1.0
N_AUDIOSET = 527
BN_EPS = 1e-3  # EfficientAT's BatchNorm2d(eps=0.001, momentum=0.01)
BN_MOMENTUM = 0.01


def round_channels(channels: float, divisor: int = 8) -> int:
    """Scale-and-round rule of the MobileNet family: nearest multiple of ``divisor``, at least ``divisor``.

    A result more than 10 % below ``channels`` is raised by one ``divisor``
    (the rule of TensorFlow's slim MobileNet, which EfficientAT uses).
    """
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * channels:
        rounded += divisor
    return rounded


def embedding_dim(width: float) -> int:
    """Size of the embedding of a width multiplier: 6 x the last block's channels (384 at 0.4)."""
    return 6 * round_channels(MOBILENET_V3_LARGE[-1][3] * width)


def _conv_bn_act(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: type[nn.Module] | None = None, folded: bool = False) -> ConvBNAct:
    """EfficientAT's conv -> BatchNorm (eps 1e-3, momentum 0.01) -> optional activation."""
    return ConvBNAct(cin, cout, kernel, stride, groups, act, folded, bn_eps=BN_EPS, bn_momentum=BN_MOMENTUM)


class SEGate(nn.Module):
    """Channel gate of squeeze-excitation: mean over (freq, time) -> fc1 -> ReLU -> fc2 -> sigmoid.

    Args:
        channels: channels gated.
        squeeze: bottleneck width.
    """

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, squeeze)
        self.fc2 = nn.Linear(squeeze, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, channels, freq, time)
        s = x.mean(dim=(2, 3))  # (batch, channels)
        s = self.fc2(torch.relu(self.fc1(s)))  # (batch, channels)
        return torch.sigmoid(s)[:, :, None, None]  # (batch, channels, 1, 1)


class SqueezeExcite(nn.Module):
    """Channel squeeze-excitation; the gate is stored as ``conc_se_layers.0`` (EfficientAT's key names).

    Args:
        channels: channels of the block's expanded map.
        reduction: bottleneck reduction (the bottleneck is rounded to a multiple of 8).
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.conc_se_layers = nn.ModuleList([SEGate(channels, round_channels(channels // reduction))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, channels, freq, time)
        return x * self.conc_se_layers[0](x)  # (batch, channels, freq, time)


class InvertedResidual(nn.Module):
    """MobileNetV3 bottleneck: [expand 1x1] -> depthwise kxk -> [SE] -> project 1x1, + input when shapes allow.

    Args:
        cin: input channels.
        kernel: depthwise kernel size.
        expanded: expanded channels.
        cout: output channels.
        use_se: add squeeze-excitation after the depthwise conv.
        hardswish: hardswish activations (else ReLU).
        stride: depthwise stride (1 or 2).
        folded: build the folded structure (no BatchNorm).
    """

    def __init__(self, cin: int, kernel: int, expanded: int, cout: int, use_se: bool, hardswish: bool, stride: int,
                 folded: bool = False) -> None:
        super().__init__()
        act = nn.Hardswish if hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(_conv_bn_act(cin, expanded, 1, act=act, folded=folded))
        layers.append(_conv_bn_act(expanded, expanded, kernel, stride=stride, groups=expanded, act=act, folded=folded))
        if use_se:
            layers.append(SqueezeExcite(expanded))
        layers.append(_conv_bn_act(expanded, cout, 1, act=None, folded=folded))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, cin, freq, time)
        y = self.block(x)  # (batch, cout, freq / stride, time / stride)
        return x + y if self.residual else y


class EfficientATMobileNet(nn.Module):
    """EfficientAT's MobileNetV3 ("mn") with the MLP head, on log-mels ``(batch, 1, mels, frames)``.

    Args:
        width: width multiplier (0.4 for mn04).
        n_classes: output logits (527 AudioSet classes).
        in_channels: input channels (1: a log-mel).
        dropout: dropout of the head (inactive in eval mode).
        folded: build the folded structure (no BatchNorm; see :meth:`fuse`).
    """

    def __init__(self, width: float = 0.4, n_classes: int = N_AUDIOSET, in_channels: int = 1, dropout: float = 0.2,
                 folded: bool = False) -> None:
        super().__init__()
        self.width = float(width)
        rows = [
            (round_channels(cin * width), k, round_channels(exp * width), round_channels(cout * width), se, hs, s)
            for cin, k, exp, cout, se, hs, s in MOBILENET_V3_LARGE
        ]
        layers: list[nn.Module] = [_conv_bn_act(in_channels, rows[0][0], 3, stride=2, act=nn.Hardswish, folded=folded)]
        layers += [InvertedResidual(*row, folded=folded) for row in rows]
        last = rows[-1][3]
        self.dim = 6 * last
        layers.append(_conv_bn_act(last, self.dim, 1, act=nn.Hardswish, folded=folded))
        self.features = nn.Sequential(*layers)
        self.hidden = round_channels(HEAD_HIDDEN * width)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(start_dim=1),
            nn.Linear(self.dim, self.hidden),
            nn.Hardswish(),
            nn.Dropout(p=dropout),
            nn.Linear(self.hidden, n_classes),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        """Random init as EfficientAT's: He (fan-out) convs, unit BN, N(0, 0.01) linears, zero biases."""
        init_mobile_weights(self, linear_std=0.01)

    def embed_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and embedding of log-mels ``(batch, 1, n_mels, frames)``: ``(batch, n_classes)``, ``(batch, dim)``."""
        fmap = self.features(x)  # (batch, dim, n_mels / 32, frames / 32) (rounded up)
        pooled = self.classifier[1](self.classifier[0](fmap))  # (batch, dim): mean over freq and time
        logits = self.classifier[2:](pooled)  # (batch, n_classes)
        return logits, pooled

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and embedding of a batch of log-mels.

        Args:
            x: ``(batch, 1, n_mels, frames)``.

        Returns:
            logits ``(batch, n_classes)`` and embedding ``(batch, dim)``.
        """
        return self.embed_and_logits(x)

    def fuse(self):
        """Fold every BatchNorm into the conv before it, in place (same function in eval mode)."""
        blocks = [m for m in self.modules() if isinstance(m, ConvBNAct)]
        if not any(isinstance(b[1], nn.BatchNorm2d) for b in blocks):
            raise Sp4scError(f"{type(self).__name__}: model is already folded")
        for b in blocks:
            b.fuse()
        return self


def check_width(state: dict[str, torch.Tensor], width: float, name: str, path: Path, option: str = "") -> None:
    """Refuse weights of another width, naming the registry name that fits them (after ``option``,
    e.g. ``"--encoder "``)."""
    last = state.get("features.16.0.weight")
    dim = embedding_dim(width)
    if isinstance(last, torch.Tensor) and last.ndim == 4 and last.shape[0] != dim:
        guess = [v for v, w in WIDTHS.items() if embedding_dim(w) == last.shape[0]]
        hint = f"; try {option}efficientat_{guess[0]}" if guess else ""
        raise Sp4scError(f"{path}: an EfficientAT network with {last.shape[0]}-d features, not {name} ({dim}-d){hint}")


class EfficientATClassifier(EfficientATMobileNet):
    """An EfficientAT MobileNet as a classifier backbone: log-mels ``(batch, 1, frames, mels)`` -> logits.

    Same modules and state-dict keys as :class:`EfficientATMobileNet` (so an AudioSet file
    loads into it strictly), with ``classifier.5`` sized ``n_classes``. The input is our
    pipeline's layout (frames before mels), transposed to EfficientAT's before the stem.

    Args:
        width: width multiplier (set by the registry name).
        n_classes: classes of the new head.
        n_mels: mel bins of the input (128: the ``efficientat32k`` front end, what the AudioSet
            weights were trained on).
        dropout: dropout of the head (EfficientAT: 0.2).
        folded: build the folded structure (no BatchNorm).
        pretrained: local AudioSet weights file (e.g. ``mn04_as_mAP_432.pt``) loaded strictly
            (``weights_only=True``) into the 527-way network before its head is replaced; None:
            EfficientAT's random init. Never downloaded. Not part of :attr:`arch_kwargs`: a trained
            checkpoint rebuilds the structure and loads its own weights.
        arch_name: registry name recorded in :attr:`arch_name`.
        arch_kwargs: rebuild arguments recorded in :attr:`arch_kwargs`.
    """

    min_frames = 1  # fully convolutional with "same" padding: any frame count works

    def __init__(self, width: float = 0.4, n_classes: int = 10, n_mels: int = 128, dropout: float = 0.2,
                 folded: bool = False, pretrained: Optional[str] = None, *, arch_name: str = "efficientat_mn04",
                 arch_kwargs: Optional[dict[str, Any]] = None) -> None:
        if n_classes <= 0 or n_mels <= 0:
            raise Sp4scError(f"{arch_name}: need n_classes > 0 and n_mels > 0")
        if pretrained is not None and folded:
            raise Sp4scError(f"{arch_name}: pretrained weights load into the unfolded model; fold it afterwards")
        super().__init__(width, n_classes=N_AUDIOSET if pretrained else n_classes, dropout=dropout, folded=folded)
        self.arch_name = arch_name
        self.arch_kwargs = dict(arch_kwargs if arch_kwargs is not None else
                                {"n_classes": n_classes, "n_mels": n_mels, "dropout": dropout, "folded": folded})
        self.n_classes = int(n_classes)
        self.n_mels = int(n_mels)
        self.pretrained_from: Optional[str] = None
        if pretrained is not None:
            self.load_audioset(Path(pretrained).expanduser())
            head = nn.Linear(self.hidden, n_classes)
            nn.init.normal_(head.weight, 0.0, 0.01)
            nn.init.zeros_(head.bias)
            self.classifier[5] = head

    def load_audioset(self, path: Path) -> None:
        """Load EfficientAT's released AudioSet state dict strictly (the 527-way head still in place)."""
        from sp4sc.models.checkpoint import check_state_dict, read_checkpoint, unwrap_state

        if not path.is_file():
            raise Sp4scError(f"--model.backbone_kwargs.pretrained {path}: no such file; give the local EfficientAT "
                             "weights (e.g. ../shared/weights/efficientat/mn04_as_mAP_432.pt)")
        state = unwrap_state(read_checkpoint(path), path, prefixes=("net.", "model."))  # weights_only=True
        check_width(state, self.width, self.arch_name, path, option="--model.backbone ")
        check_state_dict(self, state, str(path))  # strict; names the mismatching keys
        self.pretrained_from = str(path)

    @property
    def feature_dim(self) -> int:
        """Width of :meth:`features` (the pooled embedding the head reads)."""
        return int(self.dim)

    @property
    def folded(self) -> bool:
        return not any(isinstance(m, nn.BatchNorm2d) for m in self.modules())

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(batch, n_classes)`` and the pooled embedding ``(batch, dim)`` of ``(batch, 1, frames, mels)``."""
        check_input(x, self.n_mels, self.min_frames, self.arch_name)
        x = x.transpose(2, 3)  # (batch, 1, mels, frames): EfficientAT's layout
        return self.embed_and_logits(x)  # (batch, n_classes), (batch, dim)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The clip embedding ``(batch, dim)``: EfficientAT's pooled last feature map (the frozen encoder's).

        (Not ``features()`` as on the CNN families: ``features`` is the conv stack's module name in
        EfficientAT's state dict.)
        """
        return self.logits_and_features(x)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # (batch, 1, frames, mels) -> (batch, n_classes)
        return self.logits_and_features(x)[0]

    def fuse(self):
        """Fold every BatchNorm in place; ``arch_kwargs["folded"]`` becomes True."""
        super().fuse()
        self.arch_kwargs["folded"] = True
        return self


def _build(name: str, kwargs: dict) -> EfficientATClassifier:
    defaults = {"n_classes": 10, "n_mels": 128, "dropout": 0.2, "folded": False}
    unknown = sorted(set(kwargs) - set(defaults) - {"pretrained"})
    if unknown:
        raise TypeError(f"unexpected options {unknown}; allowed: {sorted(defaults) + ['pretrained']}")
    opts = {key: type(default)(kwargs.get(key, default)) for key, default in defaults.items()}
    pretrained = kwargs.get("pretrained")
    return EfficientATClassifier(WIDTHS[name.split("_")[1]], **opts,
                                 pretrained=None if pretrained in (None, "") else str(pretrained),
                                 arch_name=name, arch_kwargs=dict(opts))


@register_model("efficientat_mn04", frontend="efficientat32k",
                description="EfficientAT mn04 (MobileNetV3 x 0.4, AudioSet-pretrainable; ~0.9 M params)")
def efficientat_mn04(**kwargs) -> EfficientATClassifier:
    return _build("efficientat_mn04", kwargs)


@register_model("efficientat_mn10", frontend="efficientat32k",
                description="EfficientAT mn10 (MobileNetV3 x 1.0, AudioSet-pretrainable; ~4.9 M params)")
def efficientat_mn10(**kwargs) -> EfficientATClassifier:
    return _build("efficientat_mn10", kwargs)
