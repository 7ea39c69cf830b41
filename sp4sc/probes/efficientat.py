"""EfficientAT MobileNets (Schmid, Koutini, Widmer, ICASSP 2023) as frozen encoders.

The network (:class:`sp4sc.models.efficientat.EfficientATMobileNet`, our own
re-implementation from the published facts; the released state dicts such as
``mn04_as_mAP_432.pt`` load into it strictly, key for key) and its front end
(:class:`sp4sc.frontend.efficientat_mel.EfficientATMel`, EfficientAT's
``AugmentMelSTFT`` in eval mode) live in the lower layers, where the trainable
backbone ``efficientat_mn04`` (:mod:`sp4sc.models.efficientat`) uses the same
code; this module wraps them as a frozen encoder bundle.

The embedding is the global average over frequency and time of the
``features.16`` map (384-d for mn04), the vector EfficientAT's forward returns
beside the logits.

Front end: pre-emphasis ``y[n] = x[n+1] - 0.97 x[n]`` (one sample shorter),
STFT n_fft 1024 with a symmetric 800-sample Hann window, hop 320, centre reflect
padding; power; 128 Kaldi-style triangular mel banks over 0-15 kHz (a zero column
for the Nyquist bin); ``(log(mel + 1e-5) + 4.5) / 5``. A 10 s clip at 32 kHz gives
1000 frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from sp4sc.errors import Sp4scError
from sp4sc.frontend.efficientat_mel import EfficientATMel, EfficientATMelConfig, kaldi_mel_banks
from sp4sc.models.efficientat import (
    N_AUDIOSET, WIDTHS, EfficientATMobileNet, check_width, embedding_dim, round_channels,
)
from sp4sc.models.checkpoint import unwrap_state
from sp4sc.probes.bundle import EncoderBundle

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
        state = unwrap_state(ckpt, path, prefixes=("net.", "model."))
        check_width(state, self.width, self.name, path, option="--encoder ")
        return state


def n_frames(n_samples: int, cfg: EfficientATMelConfig = EfficientATMelConfig()) -> int:
    """Log-mel frames of a waveform of ``n_samples`` (after the one-sample pre-emphasis loss)."""
    return 1 + (n_samples - 1) // cfg.hop
