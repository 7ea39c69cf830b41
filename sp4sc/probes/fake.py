"""A tiny, fast encoder for tests and pipeline checks (never registered by the package).

``FakeEncoder`` embeds a window as the log power in 16 frequency bands
(8 kHz, 256-point STFT) averaged over time, followed by a seeded 16 x 16
linear map: a real function of the audio that separates toy classes, runs in
microseconds and has a state dict (``proj.weight``, ``proj.bias``) for
checkpoint tests. Register it with
``register_encoder(FakeEncoder.name, FakeEncoder)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sp4sc.probes.bundle import EncoderBundle


class _FakeNet(nn.Module):
    def __init__(self, n_fft: int = 256, bands: int = 16) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.bands = bands
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.proj = nn.Linear(bands, bands)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        # wav: (batch, samples)
        spec = torch.stft(wav, self.n_fft, hop_length=self.n_fft // 2, window=self.window, return_complex=True)
        power = spec.abs().pow(2)[:, 1:, :]  # (batch, 128 bins, frames)
        bands = power.reshape(power.shape[0], self.bands, -1, power.shape[-1]).mean(dim=2)  # (batch, 16, frames)
        feat = torch.log(bands + 1e-8).mean(dim=-1)  # (batch, 16)
        return self.proj(feat)  # (batch, 16)


class FakeEncoder(EncoderBundle):
    """Test-only encoder: 8 kHz, 16-d (see the module docstring)."""

    name = "fake-test"
    sample_rate = 8000
    dim = 16
    max_window_s = None
    min_window_s = 0.04

    def _build(self, cfg: dict[str, Any] | None) -> nn.Module:
        return _FakeNet()

    def _forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.model(wav)  # (batch, 16)
