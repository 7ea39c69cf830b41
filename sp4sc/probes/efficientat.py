"""EfficientAT MobileNets (Schmid, Koutini, Widmer, ICASSP 2023) as frozen encoders, in our own code.

The network is the MobileNetV3-Large inverted-residual stack scaled by a width
multiplier, with channel squeeze-excitation, trained on AudioSet by knowledge
distillation from PaSST ensembles (public repository fschmid56/EfficientAT,
MIT licence). This file re-implements it from the published facts (layer
table, channel rounding, front-end settings) so that the released state dicts
(e.g. ``mn04_as_mAP_432.pt``) load strictly, key for key:

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

Front end (EfficientAT's ``AugmentMelSTFT`` in eval mode): pre-emphasis
``y[n] = x[n+1] - 0.97 x[n]`` (one sample shorter), STFT n_fft 1024 with a
symmetric 800-sample Hann window, hop 320, centre reflect padding; power; 128
Kaldi-style triangular mel banks over 0-15 kHz (a zero column for the Nyquist
bin); ``(log(mel + 1e-5) + 4.5) / 5``. A 10 s clip at 32 kHz gives 1000 frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sp4sc.errors import Sp4scError
from sp4sc.probes.bundle import EncoderBundle, _unwrap_state

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


# --------------------------------------------------------------------------- front end
@dataclass(frozen=True)
class EfficientATMelConfig:
    """Settings of EfficientAT's log-mel front end in eval mode (see the module docstring).

    Attributes:
        sample_rate: input rate, Hz.
        n_fft: FFT size.
        win_length: symmetric Hann window length, samples.
        hop: hop, samples.
        n_mels: mel bands.
        fmin: lowest band edge, Hz.
        fmax: highest band edge, Hz (``sr / 2 - 1000`` in EfficientAT's eval mode).
        preemphasis: pre-emphasis coefficient.
        log_offset: added to the mel power before the log.
        shift: added to the log mel ...
        scale: ... and the sum divided by this ("fast normalisation").
    """

    sample_rate: int = 32000
    n_fft: int = 1024
    win_length: int = 800
    hop: int = 320
    n_mels: int = 128
    fmin: float = 0.0
    fmax: float = 15000.0
    preemphasis: float = 0.97
    log_offset: float = 1e-5
    shift: float = 4.5
    scale: float = 5.0


def kaldi_mel_banks(n_mels: int, n_fft: int, sample_rate: int, fmin: float, fmax: float) -> torch.Tensor:
    """Kaldi-style triangular mel filters, ``(n_mels, n_fft // 2)`` float32.

    Mel scale ``1127 ln(1 + f / 700)``; ``n_mels + 2`` equally spaced mel
    points between ``fmin`` and ``fmax`` give each filter's left edge, centre
    and right edge; FFT bin ``j`` (frequency ``j · sr / n_fft``, ``j < n_fft / 2``)
    gets ``max(0, min(up, down))`` of the two slopes measured in mel. No
    warping (Kaldi's VTLN factor 1), no Nyquist bin (the caller pads it).
    """

    def mel(f: torch.Tensor) -> torch.Tensor:
        return 1127.0 * torch.log1p(f / 700.0)

    lo = mel(torch.tensor(float(fmin), dtype=torch.float64))
    hi = mel(torch.tensor(float(fmax), dtype=torch.float64))
    step = (hi - lo) / (n_mels + 1)
    edges = lo + step * torch.arange(n_mels + 2, dtype=torch.float64)  # (n_mels + 2,)
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (n_mels, 1) each
    bins = mel(torch.arange(n_fft // 2, dtype=torch.float64) * (sample_rate / n_fft))[None, :]  # (1, n_fft/2)
    up = (bins - left) / (centre - left)
    down = (right - bins) / (right - centre)
    return torch.clamp(torch.minimum(up, down), min=0.0).float()  # (n_mels, n_fft/2)


class EfficientATMel(nn.Module):
    """Waveform -> EfficientAT's normalised log-mel (eval mode: no random band edges, no masking).

    Args:
        cfg: front-end settings.

    The window and mel matrix are non-persistent buffers: checkpoints hold only the network.
    """

    def __init__(self, cfg: EfficientATMelConfig = EfficientATMelConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("window", torch.hann_window(cfg.win_length, periodic=False), persistent=False)
        banks = kaldi_mel_banks(cfg.n_mels, cfg.n_fft, cfg.sample_rate, cfg.fmin, cfg.fmax)
        self.register_buffer("mel_basis", nn.functional.pad(banks, (0, 1)), persistent=False)  # (n_mels, n_fft/2 + 1)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        # wav: (batch, samples) float
        c = self.cfg
        x = wav[:, 1:] - c.preemphasis * wav[:, :-1]  # (batch, samples - 1)
        spec = torch.stft(
            x, c.n_fft, hop_length=c.hop, win_length=c.win_length, window=self.window,
            center=True, pad_mode="reflect", normalized=False, return_complex=True,
        )  # (batch, n_fft/2 + 1, frames); frames = 1 + (samples - 1) // hop
        power = spec.real.square() + spec.imag.square()  # (batch, 513, frames)
        mel = torch.matmul(self.mel_basis, power)  # (batch, n_mels, frames)
        return (torch.log(mel + c.log_offset) + c.shift) / c.scale  # (batch, n_mels, frames)


# --------------------------------------------------------------------------- network
class ConvBNAct(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> optional activation; children ``0``, ``1``, ``2``.

    Args:
        cin: input channels.
        cout: output channels.
        kernel: square kernel size; "same" padding ``(kernel - 1) // 2``.
        stride: stride.
        groups: conv groups (``cin`` for depthwise).
        act: activation class (``nn.ReLU``, ``nn.Hardswish``) or None.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: type[nn.Module] | None = None) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=(kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


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
    """

    def __init__(self, cin: int, kernel: int, expanded: int, cout: int, use_se: bool, hardswish: bool, stride: int) -> None:
        super().__init__()
        act = nn.Hardswish if hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(ConvBNAct(cin, expanded, 1, act=act))
        layers.append(ConvBNAct(expanded, expanded, kernel, stride=stride, groups=expanded, act=act))
        if use_se:
            layers.append(SqueezeExcite(expanded))
        layers.append(ConvBNAct(expanded, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, cin, freq, time)
        y = self.block(x)  # (batch, cout, freq / stride, time / stride)
        return x + y if self.residual else y


class EfficientATMobileNet(nn.Module):
    """EfficientAT's MobileNetV3 ("mn") with the MLP head, on log-mels.

    Args:
        width: width multiplier (0.4 for mn04).
        n_classes: output logits (527 AudioSet classes).
        in_channels: input channels (1: a log-mel).
        dropout: dropout of the head (inactive in eval mode).
    """

    def __init__(self, width: float = 0.4, n_classes: int = N_AUDIOSET, in_channels: int = 1, dropout: float = 0.2) -> None:
        super().__init__()
        self.width = float(width)
        rows = [
            (round_channels(cin * width), k, round_channels(exp * width), round_channels(cout * width), se, hs, s)
            for cin, k, exp, cout, se, hs, s in MOBILENET_V3_LARGE
        ]
        layers: list[nn.Module] = [ConvBNAct(in_channels, rows[0][0], 3, stride=2, act=nn.Hardswish)]
        layers += [InvertedResidual(*row) for row in rows]
        last = rows[-1][3]
        self.dim = 6 * last
        layers.append(ConvBNAct(last, self.dim, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        hidden = round_channels(HEAD_HIDDEN * width)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(start_dim=1),
            nn.Linear(self.dim, hidden),
            nn.Hardswish(),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, n_classes),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        """Random init as EfficientAT's: He (fan-out) convs, unit BN, N(0, 0.01) linears, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and embedding of a batch of log-mels.

        Args:
            x: ``(batch, 1, n_mels, frames)``.

        Returns:
            logits ``(batch, n_classes)`` and embedding ``(batch, dim)``.
        """
        fmap = self.features(x)  # (batch, dim, n_mels / 32, frames / 32) (rounded up)
        pooled = self.classifier[1](self.classifier[0](fmap))  # (batch, dim): mean over freq and time
        logits = self.classifier[2:](pooled)  # (batch, n_classes)
        return logits, pooled


class _EfficientATNet(nn.Module):
    """Front end + network: waveform -> (logits, embedding)."""

    def __init__(self, width: float) -> None:
        super().__init__()
        self.mel = EfficientATMel()
        self.net = EfficientATMobileNet(width)

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # wav: (batch, samples) at 32 kHz
        with torch.autocast(wav.device.type, enabled=False):  # front end in float32 (no bf16 STFT)
            mel = self.mel(wav.float())  # (batch, 128, frames); 100 frames per second
        return self.net(mel.unsqueeze(1))  # (batch, 527), (batch, dim)


# --------------------------------------------------------------------------- bundle
class EfficientATEncoder(EncoderBundle):
    """EfficientAT MobileNet ``mnXX`` (AudioSet tagger) as a frozen encoder bundle.

    32 kHz input; the embedding is the pooled last feature map (384-d for
    mn04, ``6 * round8(160 * width)`` in general) and :meth:`embed_with_logits`
    also gives the 527 AudioSet logits (multi-label: apply a sigmoid).
    The network is fully convolutional before the global pooling: any window
    from :attr:`min_window_s` up is accepted.

    A checkpoint is EfficientAT's released state dict (``features.*``,
    ``classifier.*``; e.g. ``mn04_as_mAP_432.pt``), bare or under
    ``"model"``/``"state_dict"``, optionally prefixed ``net.``; it must match
    the width of the chosen name (``efficientat_mn04`` for an mn04 file).

    Args:
        variant: ``"mn01"`` ... ``"mn40"`` (see :data:`WIDTHS`).
    """

    sample_rate = 32000
    max_window_s = None
    min_window_s = 0.032  # 1024 samples: centre reflect padding needs more than n_fft / 2 samples
    n_logits = N_AUDIOSET
    label_set = "audioset"

    def __init__(self, variant: str = "mn04") -> None:
        super().__init__()
        if variant not in WIDTHS:
            raise Sp4scError(f"efficientat: unknown variant {variant!r}; choose one of {', '.join(WIDTHS)}")
        self.variant = variant
        self.width = WIDTHS[variant]
        self.name = f"efficientat_{variant}"
        self.dim = embedding_dim(self.width)

    def _build(self, cfg: dict[str, Any] | None) -> nn.Module:
        return _EfficientATNet(self.width)

    def _forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self._forward_logits(wav)[1]  # (batch, dim)

    # On a CPU the forward is fastest with about 16-20 s of audio per call (measured on 2 cores:
    # mn04 at δt = 5 s gives ~70 windows/s in calls of 4 windows, ~40 in calls of 32, whose
    # feature maps spill the caches); larger batches are run in slices of this many samples.
    cpu_slice_samples = 20 * 32000

    def _forward_logits(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # wav: (batch, samples)
        if wav.shape[1] <= self.model.mel.cfg.n_fft // 2 + 1:
            raise Sp4scError(
                f"{self.name}: windows of {wav.shape[1]} samples are too short (at least {self.min_window_s:g} s); use a longer --dt"
            )
        step = max(1, self.cpu_slice_samples // wav.shape[1]) if wav.device.type == "cpu" else wav.shape[0]
        if step >= wav.shape[0]:
            return self.model(wav)  # (batch, 527), (batch, dim)
        # eval mode: every window is computed on its own, so slicing the batch changes nothing
        parts = [self.model(wav[i : i + step]) for i in range(0, wav.shape[0], step)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])  # (batch, 527), (batch, dim)

    def _state_target(self) -> nn.Module:
        return self.model.net

    def _state_from_checkpoint(self, ckpt: dict, path: Path) -> dict[str, torch.Tensor]:
        state = _unwrap_state(ckpt, path, prefixes=("net.", "model."))
        last = state.get("features.16.0.weight")
        if isinstance(last, torch.Tensor) and last.ndim == 4 and last.shape[0] != self.dim:
            guess = [v for v, w in WIDTHS.items() if embedding_dim(w) == last.shape[0]]
            hint = f"; try --encoder efficientat_{guess[0]}" if guess else ""
            raise Sp4scError(
                f"{path}: an EfficientAT network with {last.shape[0]}-d features, not {self.name} "
                f"({self.dim}-d){hint}"
            )
        return state


def n_frames(n_samples: int, cfg: EfficientATMelConfig = EfficientATMelConfig()) -> int:
    """Log-mel frames of a waveform of ``n_samples`` (after the one-sample pre-emphasis loss)."""
    return 1 + (n_samples - 1) // cfg.hop
