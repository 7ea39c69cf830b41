"""EfficientAT's log-mel front end (``AugmentMelSTFT`` in eval mode), in our own code.

Facts from the public EfficientAT repository (fschmid56/EfficientAT, MIT licence,
``models/preprocess.py``) and the weights README beside ``mn04_as_mAP_432.pt``:
pre-emphasis ``y[n] = x[n+1] - 0.97 x[n]`` (a valid 2-tap filter: one sample
shorter), STFT with n_fft 1024, a symmetric 800-sample Hann window, hop 320 and
centre reflect padding; power ``re² + im²``; 128 Kaldi-style triangular mel banks
over 0-15 kHz (a zero column for the Nyquist bin); ``(log(mel + 1e-5) + 4.5) / 5``.
A 10 s clip at 32 kHz gives 1000 frames (``1 + (samples - 1) // hop``).

This is not a Slaney-mel/dB front end, so :class:`sp4sc.frontend.features.LogMel`
computes it through this module when a :class:`~sp4sc.frontend.features.FrontEndConfig`
has ``style="efficientat"`` (preset ``efficientat32k``): the training pipeline then
feeds an EfficientAT backbone exactly the features its AudioSet weights were trained on.
The frozen-encoder bundle (:mod:`sp4sc.probes.efficientat`) uses the same module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class EfficientATMelConfig:
    """Settings of EfficientAT's log-mel front end in eval mode.

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


def n_frames(n_samples: int, hop: int = EfficientATMelConfig.hop) -> int:
    """Log-mel frames of a waveform of ``n_samples`` (after the one-sample pre-emphasis loss)."""
    return 1 + (n_samples - 1) // hop
