"""Log-mel front ends as frozen, hashable configs and batched torch modules.

``LogMel(cfg)`` maps waveforms ``(batch, samples)`` at ``cfg.sample_rate`` to
log-mel spectrograms ``(batch, frames, mels)``. It equals librosa's
``melspectrogram`` + ``power_to_db(ref=1, amin=1e-10, top_db=None)`` with the
same settings (periodic Hann window, centred frames with reflect padding, power
spectrum, Slaney-scale Slaney-normalised mel filters); the tests check this to
0.01 dB on real ESC-10 clips.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from sp4sc.errors import Sp4scError


@dataclass(frozen=True)
class FrontEndConfig:
    """A log-mel front end. Frozen and hashable: its :meth:`digest` keys the feature cache.

    Attributes:
        name: preset it came from (informative; not part of the digest).
        sample_rate: rate the audio is resampled to, Hz.
        n_fft: FFT size in samples.
        win_length: window length in samples (periodic Hann, centred in n_fft).
        hop_length: hop in samples.
        n_mels: number of mel bands.
        f_min: lowest mel filter edge, Hz.
        f_max: highest mel filter edge, Hz.
        duration: clip length in seconds; audio is padded with zeros or cropped to it.
        amin: floor of the power before the log: 10*log10(max(P, amin)).
        style: ``"librosa"`` (the definition above: periodic Hann, Slaney mels, dB) or
            ``"efficientat"``: EfficientAT's front end (pre-emphasis 0.97, symmetric Hann,
            Kaldi mels, ``(ln(mel + 1e-5) + 4.5) / 5``; :mod:`sp4sc.frontend.efficientat_mel`),
            which the EfficientAT backbones' AudioSet weights were trained on and which no
            Slaney/dB setting reproduces. ``amin`` is unused then. Left out of :meth:`to_dict`
            (and so of the digest and of exported ``frontend.json``) when ``"librosa"``, so the
            existing feature caches and exports keep their keys.
    """

    name: str
    sample_rate: int
    n_fft: int
    win_length: int
    hop_length: int
    n_mels: int
    f_min: float
    f_max: float
    duration: float = 10.0
    amin: float = 1e-10
    style: str = "librosa"

    def __post_init__(self) -> None:
        problems = []
        if self.style not in STYLES:
            problems.append(f"style must be one of {list(STYLES)}, got {self.style!r}")
        if self.sample_rate <= 0:
            problems.append("sample_rate must be positive")
        if not 0 < self.win_length <= self.n_fft:
            problems.append("win_length must be in (0, n_fft]")
        if self.hop_length <= 0:
            problems.append("hop_length must be positive")
        if self.n_mels <= 0:
            problems.append("n_mels must be positive")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            problems.append(f"need 0 <= f_min < f_max <= sample_rate/2 ({self.sample_rate / 2:g})")
        if self.duration <= 0:
            problems.append("duration must be positive")
        if problems:
            raise Sp4scError(f"front end {self.name!r}: " + "; ".join(problems))

    @property
    def n_samples(self) -> int:
        """Samples per clip after padding/cropping."""
        return int(round(self.duration * self.sample_rate))

    @property
    def n_frames(self) -> int:
        """Frames per clip (centred STFT): 1 + n_samples // hop (EfficientAT style: 1 + (n_samples - 1) // hop)."""
        return self.frames_for(self.duration)

    def frames_for(self, seconds: float) -> int:
        """Frames of a clip of ``seconds`` seconds."""
        n = int(round(seconds * self.sample_rate))
        if self.style == "efficientat":  # pre-emphasis drops one sample before the STFT
            n -= 1
        return 1 + n // self.hop_length

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["style"] == "librosa":  # the default: keep the keys (and digests) of configs made before it existed
            del d["style"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FrontEndConfig":
        """Rebuild from :meth:`to_dict`; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise Sp4scError(f"front end config: unknown keys {unknown}; known: {sorted(names)}")
        return cls(**d)

    def digest(self) -> str:
        """Hash of everything that changes the features (the name does not)."""
        d = self.to_dict()
        d.pop("name")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def replace(self, **changes: Any) -> "FrontEndConfig":
        return dataclasses.replace(self, **changes)


# Front-end definitions LogMel computes (see FrontEndConfig.style).
STYLES = ("librosa", "efficientat")

PRESETS: dict[str, FrontEndConfig] = {
    # SP4ASC (Puy et al., DCASE 2021): 431 x 256 for a 10 s clip.
    "sp4asc": FrontEndConfig("sp4asc", 44100, 2048, 2048, 1024, 256, 0.0, 22050.0, 10.0),
    # SP4ASC's time-frequency tiling for 16 kHz audio (ESC-50's 16 kHz copy): the same 23 ms
    # hop (368 samples; 218 x 128 for a 5 s clip), a 64 ms window, and 128 Slaney mels over
    # 0-8 kHz. At 44.1 kHz the sp4asc preset gives ~24 % of its 256 bins to 8-22 kHz, empty in
    # 16 kHz audio; this one has half the bins, so the model costs half the MACs.
    "sp4asc16k": FrontEndConfig("sp4asc16k", 16000, 1024, 1024, 368, 128, 0.0, 8000.0, 10.0),
    # PANNs (Kong et al., 2020): 1001 x 64 for a 10 s clip.
    "panns": FrontEndConfig("panns", 32000, 1024, 1024, 320, 64, 50.0, 14000.0, 10.0),
    # PANNs' 32 ms window and 10 ms hop at 16 kHz (501 x 64 for a 5 s clip, as panns gives at
    # 32 kHz), 64 mels over 50-8000 Hz: for 16 kHz audio such as ESC-50's shared copy, where
    # panns' 8-14 kHz bands would be empty.
    "panns16k": FrontEndConfig("panns16k", 16000, 512, 512, 160, 64, 50.0, 8000.0, 10.0),
    # The DCASE 2024/2025 Task 1 baseline's tiling (CPJKU dcase2024_task1_baseline, run_training.py
    # defaults): 32 kHz, a 3072-sample (96 ms) Hann window in a 4096-point FFT, hop 500 (~16 ms),
    # 256 mels over 0-16 kHz: 65 x 256 for the task's 1 s segments. Only the tiling is theirs;
    # the mel filters and log are ours. Their torchaudio MelSpectrogram uses HTK-scale mel
    # filters without area normalisation and ln(P + 1e-5), where LogMel uses Slaney-scale,
    # unit-area filters and 10*log10(max(P, 1e-10)); the shapes (and so the model's parameters
    # and MACs) are the same, the values are not, so their checkpoints do not transfer as they are.
    "dcase2024": FrontEndConfig("dcase2024", 32000, 4096, 3072, 500, 256, 0.0, 16000.0, 1.0),
    # EfficientAT's own front end (Schmid et al. 2023; the AudioSet weights' input): 32 kHz, n_fft 1024,
    # symmetric 800-sample Hann, hop 320, 128 Kaldi mels over 0-15 kHz, pre-emphasis, (ln + 4.5) / 5;
    # 500 x 128 for a 5 s clip. For the EfficientAT backbones (sp4sc.models.efficientat).
    "efficientat32k": FrontEndConfig("efficientat32k", 32000, 1024, 800, 320, 128, 0.0, 15000.0, 10.0,
                                     style="efficientat"),
    # The demo's small front end: CPU training in minutes on 2 s clips
    # (full-resolution SP4SC trains at about 1.4 clips/s on 2 CPU cores).
    "demo": FrontEndConfig("demo", 16000, 512, 512, 256, 64, 0.0, 8000.0, 2.0),
}


def frontend_preset(name: str, **overrides: Any) -> FrontEndConfig:
    """A preset front end, optionally with some fields changed (e.g. ``duration=5.0``)."""
    if name not in PRESETS:
        raise Sp4scError(f"unknown front end {name!r}; choose one of {sorted(PRESETS)}")
    cfg = PRESETS[name]
    return cfg.replace(**overrides) if overrides else cfg


# Slaney's mel scale (Auditory Toolbox, also librosa's default): linear below 1 kHz
# (200/3 Hz per mel), logarithmic above (a factor 6.4 every 27 mels).
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel of frequencies in Hz."""
    f = np.asarray(f, dtype=np.float64)
    return np.where(f >= _MIN_LOG_HZ, _MIN_LOG_MEL + np.log(np.maximum(f, 1e-10) / _MIN_LOG_HZ) / _LOGSTEP, f / _F_SP)


def mel_to_hz(m: np.ndarray) -> np.ndarray:
    """Frequencies in Hz of Slaney mels."""
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOGSTEP * (m - _MIN_LOG_MEL)), _F_SP * m)


def mel_filterbank(cfg: FrontEndConfig) -> np.ndarray:
    """Slaney-scale, Slaney-normalised (unit area) triangular mel filters, ``(n_fft // 2 + 1, n_mels)`` float32.

    Computed here in float64 rather than with librosa (same definition; the
    tests compare the two), so that worker processes need not import librosa.
    """
    fft_freqs = np.linspace(0.0, cfg.sample_rate / 2, 1 + cfg.n_fft // 2)
    edges = mel_to_hz(np.linspace(hz_to_mel(cfg.f_min), hz_to_mel(cfg.f_max), cfg.n_mels + 2))  # (n_mels + 2,)
    widths = np.diff(edges)  # (n_mels + 1,)
    ramps = edges[:, None] - fft_freqs[None, :]  # (n_mels + 2, bins)
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))  # (n_mels, bins)
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # Slaney normalisation: each filter has unit area
    return np.ascontiguousarray(weights.T.astype(np.float32))


class LogMel(nn.Module):
    """Waveforms ``(batch, samples)`` -> log-mel ``(batch, frames, mels)`` in dB, float32.

    The FFT runs in float64: a float32 FFT's rounding noise sits about
    ``eps * ||frame||`` below each frame's energy, which shifts quiet bins (for
    instance above a lossy codec's low-pass, around -95 dB) by 0.01-0.04 dB
    against librosa. The power is then cast to float32 for the mel product,
    which keeps its relative precision (all terms are non-negative).

    On the CPU the batch is processed a few clips at a time (``cpu_chunk_frames``
    frames per FFT call): the float64 frames of one 10 s clip fill a few MB, and
    staying in cache is about 3x faster than one big call. On a GPU the whole
    batch goes at once.

    The mel matrix and window are buffers that are not saved in state dicts:
    they follow from the config, and they are not parameters.

    With ``cfg.style == "efficientat"`` the features are EfficientAT's instead
    (:class:`sp4sc.frontend.efficientat_mel.EfficientATMel`, float32 as in
    EfficientAT, transposed to ``(batch, frames, mels)``); ``fft_dtype`` is unused then.

    Args:
        cfg: the front end.
        fft_dtype: dtype of the framing and FFT; float64 by default (see above),
            float32 trades about 0.04 dB on quiet bins for speed.
        cpu_chunk_frames: frames per FFT call on the CPU.
    """

    def __init__(self, cfg: FrontEndConfig, fft_dtype: torch.dtype = torch.float64, cpu_chunk_frames: int = 512):
        super().__init__()
        self.cfg = cfg
        self.fft_dtype = fft_dtype
        self.cpu_chunk_frames = cpu_chunk_frames
        window = torch.hann_window(cfg.win_length, periodic=True, dtype=torch.float64)
        if cfg.win_length < cfg.n_fft:  # centre the window in the frame, as librosa does
            left = (cfg.n_fft - cfg.win_length) // 2
            window = nn.functional.pad(window, (left, cfg.n_fft - cfg.win_length - left))
        self.register_buffer("window", window.to(fft_dtype), persistent=False)
        self.register_buffer("mel_fb", torch.from_numpy(mel_filterbank(cfg)), persistent=False)
        self.efficientat: nn.Module | None = None
        if cfg.style == "efficientat":
            from sp4sc.frontend.efficientat_mel import EfficientATMel, EfficientATMelConfig

            self.efficientat = EfficientATMel(EfficientATMelConfig(
                sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, win_length=cfg.win_length, hop=cfg.hop_length,
                n_mels=cfg.n_mels, fmin=cfg.f_min, fmax=cfg.f_max))

    def _apply(self, fn, recurse=True):
        # Keep the window in fft_dtype when the module is cast (e.g. ``.float()``, ``.half()``).
        out = super()._apply(fn, recurse)
        if self.window.dtype != self.fft_dtype and self.window.device.type != "mps":
            self.window = self.window.to(self.fft_dtype)
        return out

    def _compute(self, wav: torch.Tensor) -> torch.Tensor:
        # (batch, samples) -> (batch, frames, mels)
        n_fft, hop = self.cfg.n_fft, self.cfg.hop_length
        if self.efficientat is not None:
            if wav.shape[-1] <= n_fft // 2 + 1:
                raise Sp4scError(f"front end {self.cfg.name!r}: {wav.shape[-1]} samples is too short for its "
                                 f"reflect padding (more than {n_fft // 2 + 1} needed); use longer clips")
            return self.efficientat(wav.float()).transpose(1, 2)  # (batch, frames, mels)
        dtype = self.window.dtype
        x = wav.to(dtype).unsqueeze(1)  # (batch, 1, samples)
        mode = "reflect" if x.shape[-1] > n_fft // 2 else "constant"  # reflect needs pad < length
        x = nn.functional.pad(x, (n_fft // 2, n_fft // 2), mode=mode).squeeze(1)  # (batch, samples + n_fft)
        frames = x.unfold(-1, n_fft, hop) * self.window  # (batch, frames, n_fft)
        spec = torch.view_as_real(torch.fft.rfft(frames))  # (batch, frames, n_fft // 2 + 1, 2)
        power = spec.to(torch.float32).square_()
        power = power[..., 0] + power[..., 1]  # (batch, frames, n_fft // 2 + 1)
        mel = torch.matmul(power, self.mel_fb)  # (batch, frames, mels)
        return 10.0 * torch.log10(torch.clamp(mel, min=self.cfg.amin))

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        # (batch, samples)
        if wav.dim() == 1:
            wav = wav.unsqueeze(0)
        if wav.shape[0] == 0:
            return wav.new_zeros((0, self.cfg.frames_for(wav.shape[-1] / self.cfg.sample_rate), self.cfg.n_mels))
        if wav.device.type != "cpu":
            return self._compute(wav)
        frames = self.cfg.frames_for(wav.shape[-1] / self.cfg.sample_rate)
        per_call = max(1, self.cpu_chunk_frames // max(frames, 1))
        if per_call >= wav.shape[0]:
            return self._compute(wav)
        return torch.cat([self._compute(part) for part in wav.split(per_call)])  # (batch, frames, mels)
