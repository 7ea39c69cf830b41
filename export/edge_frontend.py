"""The edge side's audio loading and log-mel front end, in numpy (no torch, no librosa).

This is the numpy twin of ``sp4sc.frontend.audio.load_audio`` and ``sp4sc.frontend.features.LogMel``:
an exported model folder (``sp4sc export``) holds ``frontend.json`` with the
front end's settings, and these functions turn audio files into the model's
input ``(batch, 1, frames, mels)`` exactly as the library does (the tests check
the log-mels equal to 0.01 dB and the class probabilities to 1e-4).

Dependencies: numpy and soundfile; ``soxr`` only when a file's sample rate
differs from the front end's (the library resamples with soxr too, so both sides
compute the same samples).

Nothing here imports sp4sc: the edge device installs only this folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

FRONTEND_KEYS = (
    "name", "sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "f_min", "f_max", "duration", "amin",
)
FRONTEND_FORMAT = 1


class EdgeError(Exception):
    """Bad input for the edge runner; the message names the file and the fix (printed on one line)."""


# As sp4sc.frontend.audio: resampling is said once per process and rate pair; a clip shorter than
# FAR_SHORTER of the expected length is padded with a warning (lines on stderr, like sp4sc's log).
FAR_SHORTER = 0.5
_NOTED: set[tuple[int, int]] = set()


def frontend_digest(cfg: dict[str, Any]) -> str:
    """Hash of the front-end settings; equals ``sp4sc.frontend.features.FrontEndConfig.digest()``."""
    d = {k: v for k, v in cfg.items() if k != "name"}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# --- mel filters (Slaney's auditory-toolbox mel scale, as in librosa htk=False, norm="slaney") ---
# Below 1 kHz the scale is linear (3 mels per 200 Hz); above it is logarithmic, with
# 27 mel steps per factor 6.4 in frequency (Slaney 1998, Auditory Toolbox, mel scale).
_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / _F_SP
    log_part = hz >= _MIN_LOG_HZ
    mel = np.where(log_part, _MIN_LOG_MEL + np.log(np.maximum(hz, 1e-300) / _MIN_LOG_HZ) / _LOGSTEP, mel)
    return mel


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    hz = _F_SP * mel
    return np.where(mel >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOGSTEP * (mel - _MIN_LOG_MEL)), hz)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """Triangular mel filters with Slaney area normalisation, ``(n_fft // 2 + 1, n_mels)`` float32."""
    fft_hz = np.linspace(0.0, sample_rate / 2.0, 1 + n_fft // 2)
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    widths = np.diff(edges_hz)
    ramps = edges_hz[:, None] - fft_hz[None, :]  # (n_mels + 2, bins)
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))  # (n_mels, bins)
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]  # equal area per filter
    return np.ascontiguousarray(weights.T.astype(np.float32))


def hann_window(win_length: int, n_fft: int) -> np.ndarray:
    """Periodic Hann window of ``win_length`` samples centred in ``n_fft`` (float64)."""
    n = np.arange(win_length)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / win_length)
    left = (n_fft - win_length) // 2
    return np.pad(window, (left, n_fft - win_length - left))


class EdgeFrontEnd:
    """Waveforms ``(batch, samples)`` -> log-mel ``(batch, frames, mels)`` float32 dB.

    Centred frames with reflect padding, periodic Hann window, power spectrum,
    Slaney mel filters, ``10 * log10(max(P, amin))``: the definition of
    ``sp4sc.frontend.features.LogMel``.

    Args:
        cfg: the ``"frontend"`` entry of ``frontend.json`` (``FrontEndConfig.to_dict()``).
    """

    def __init__(self, cfg: dict[str, Any]):
        missing = [k for k in FRONTEND_KEYS if k not in cfg]
        if missing:
            raise EdgeError(f"frontend.json: front end lacks {missing}; re-export the model with `sp4sc export`")
        if cfg.get("style", "librosa") != "librosa":  # e.g. EfficientAT's front end: not computed here
            raise EdgeError(f"frontend.json: front end style {cfg['style']!r} is not supported by the edge runner "
                            "(it computes Slaney-mel dB log-mels only); run the model with `sp4sc infer`")
        self.cfg = dict(cfg)
        self.sample_rate = int(cfg["sample_rate"])
        self.n_fft = int(cfg["n_fft"])
        self.hop = int(cfg["hop_length"])
        self.n_mels = int(cfg["n_mels"])
        self.amin = float(cfg["amin"])
        self.n_samples = int(round(float(cfg["duration"]) * self.sample_rate))
        self.window = hann_window(int(cfg["win_length"]), self.n_fft)
        self.mel_fb = mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, float(cfg["f_min"]), float(cfg["f_max"]))
        self._mel = _SparseMel(self.mel_fb.astype(np.float64))

    def n_frames(self, n_samples: int) -> int:
        return 1 + n_samples // self.hop

    def _buffers(self, n_frames: int) -> dict[str, np.ndarray]:
        """Work arrays for ``n_frames`` frames, kept between calls (fresh pages cost more than the maths)."""
        cached = getattr(self, "_buf", None)
        if cached is None or cached["frames"].shape[0] != n_frames:
            bins = self.n_fft // 2 + 1
            cached = {
                "frames": np.empty((n_frames, self.n_fft)),
                "spec": np.empty((n_frames, bins), dtype=np.complex128),
                "power": np.empty((n_frames, bins)),
                "tmp": np.empty((n_frames, bins)),
            }
            self._buf = cached
        return cached

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim == 1:
            wav = wav[None]
        pad = self.n_fft // 2
        if wav.shape[-1] <= pad:
            raise EdgeError(f"waveform of {wav.shape[-1]} samples is too short for n_fft {self.n_fft}")
        n_frames = self.n_frames(wav.shape[-1])
        out = np.empty((wav.shape[0], n_frames, self.n_mels), dtype=np.float32)
        buf = self._buffers(n_frames)
        for i, x in enumerate(wav):  # one clip at a time keeps memory flat; buffers are reused
            x = np.pad(x.astype(np.float64), pad, mode="reflect")
            frames = np.lib.stride_tricks.sliding_window_view(x, self.n_fft)[:: self.hop]  # (frames, n_fft)
            np.multiply(frames, self.window, out=buf["frames"])
            spec = np.fft.rfft(buf["frames"], axis=-1, out=buf["spec"])  # (frames, n_fft // 2 + 1), float64 FFT
            power = np.square(spec.real, out=buf["power"])
            power += np.square(spec.imag, out=buf["tmp"])
            mel = self._mel(power, buf).astype(np.float32)  # (frames, mels)
            np.maximum(mel, np.float32(self.amin), out=mel)
            np.log10(mel, out=mel)
            np.multiply(mel, np.float32(10.0), out=out[i])
        return out  # (batch, frames, mels)


class _SparseMel:
    """``power @ fb`` using the filters' sparsity (each FFT bin feeds at most two filters).

    Even-numbered filters have disjoint, ordered supports, and so do odd-numbered
    ones. For each parity, one weight per FFT bin (zero between supports) turns the
    product into an element-wise multiply of a contiguous slice and a segment sum
    (``np.add.reduceat``): about 2 x bins products per frame instead of bins x mels.
    Falls back to the dense product when the filters do not have that shape.
    """

    def __init__(self, fb: np.ndarray):
        self.fb = fb  # (bins, mels)
        self.parts: list | None = []
        n_mels = fb.shape[1]
        for parity in (0, 1):
            mels = list(range(parity, n_mels, 2))
            if not mels:
                continue
            spans = []
            for m in mels:
                nz = np.flatnonzero(fb[:, m])
                if nz.size == 0 or nz[-1] - nz[0] + 1 != nz.size:
                    self.parts = None
                    return
                spans.append((int(nz[0]), int(nz[-1]) + 1))
            if any(spans[i][1] > spans[i + 1][0] for i in range(len(spans) - 1)):
                self.parts = None  # overlapping supports: not the triangular layout
                return
            lo, hi = spans[0][0], spans[-1][1]
            weights = np.zeros(hi - lo)
            for m, (a, b) in zip(mels, spans):
                weights[a - lo : b - lo] = fb[a:b, m]
            # segment i runs from the start of filter i's support to the start of the next one
            starts = np.array([a - lo for a, _ in spans])
            self.parts.append((lo, hi, weights, starts, np.array(mels)))

    def __call__(self, power: np.ndarray, buf: dict[str, np.ndarray] | None = None) -> np.ndarray:
        # (frames, bins) -> (frames, mels)
        if self.parts is None:
            return power @ self.fb
        out = np.empty((power.shape[0], self.fb.shape[1]), dtype=power.dtype)
        for lo, hi, weights, starts, mels in self.parts:
            tmp = buf["tmp"][:, : hi - lo] if buf is not None else None
            out[:, mels] = np.add.reduceat(np.multiply(power[:, lo:hi], weights, out=tmp), starts, axis=1)
        return out


def load_audio(path: str | Path, sample_rate: int, duration: float | None) -> np.ndarray:
    """Read an audio file as float32 mono at ``sample_rate``, zero-padded or cropped to ``duration`` s.

    The twin of ``sp4sc.frontend.audio.load_audio``: channels are averaged, the audio is
    resampled with soxr (quality "HQ") when its rate differs, then padded with
    zeros at the end or cropped from the start.
    """
    import soundfile as sf

    p = Path(path)
    if not p.exists():
        raise EdgeError(f"{path}: audio file not found; check the path")
    if p.is_dir():
        raise EdgeError(f"{path}: is a folder, expected an audio file")
    try:
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)  # (samples, channels)
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EdgeError(f"{path}: not a readable audio file ({first}); convert it to wav/flac/ogg") from exc
    if p.stat().st_size == 0:
        raise EdgeError(f"{path}: the file is empty (0 bytes); re-copy it")
    if data.shape[0] == 0:
        raise EdgeError(f"{path}: the file holds no audio samples")
    if not np.isfinite(data).all():
        raise EdgeError(f"{path}: audio contains NaN or inf samples; re-encode the file")
    wav = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)  # as sp4sc.frontend.audio.read_audio
    if sr != sample_rate:
        try:
            import soxr
        except ImportError as exc:
            raise EdgeError(
                f"{path}: sample rate {sr} Hz differs from the model's {sample_rate} Hz and soxr is not "
                f"installed; `pip install soxr` or resample the file to {sample_rate} Hz"
            ) from exc
        if (sr, sample_rate) not in _NOTED:
            _NOTED.add((sr, sample_rate))
            print(f"INFO: resampling audio from {sr} Hz to {sample_rate} Hz (soxr, high quality)", file=sys.stderr)
        wav = soxr.resample(wav, sr, sample_rate, quality="HQ").astype(np.float32)
    if duration is not None:
        n = int(round(duration * sample_rate))
        if wav.shape[0] < FAR_SHORTER * n:
            print(f"WARNING: {path}: {wav.shape[0]} samples, far shorter than the {n} expected; padded with silence",
                  file=sys.stderr)
        wav = wav[:n] if wav.shape[0] >= n else np.pad(wav, (0, n - wav.shape[0]))
    return np.ascontiguousarray(wav, dtype=np.float32)


# --- clip length at inference: the twin of sp4sc.frontend.audio.fit_clip / ClipLengths ---

PAD_MODES = ("silence", "repeat")


def fit_clip(x: np.ndarray, n_samples: int, pad: str | None = None, crop: bool = False) -> np.ndarray:
    """Own length by default; ``pad`` ("silence" or "repeat") brings shorter clips up to ``n_samples``,
    ``crop`` cuts longer ones to their first ``n_samples`` (as ``sp4sc infer --pad/--crop``)."""
    if pad is not None and pad not in PAD_MODES:
        raise EdgeError(f"--pad {pad!r}: choose one of {', '.join(PAD_MODES)} (or leave it out: own length)")
    n = x.shape[0]
    if crop and n > n_samples:
        return np.ascontiguousarray(x[:n_samples])
    if pad is not None and 0 < n < n_samples:
        if pad == "silence":
            return np.concatenate([x, np.zeros(n_samples - n, dtype=x.dtype)])
        return np.ascontiguousarray(np.tile(x, -(-n_samples // n))[:n_samples])
    return x


class ClipLengths:
    """Tally of clip lengths against the trained length; ``note()`` is the run's one line (as sp4sc's)."""

    def __init__(self, n_samples: int, sample_rate: int, pad: str | None = None, crop: bool = False):
        self.n_samples, self.sample_rate, self.pad, self.crop = int(n_samples), int(sample_rate), pad, crop
        self.total = self.padded = self.cropped = 0
        self.own: list[int] = []

    def add(self, n_in: int, n_out: int) -> None:
        self.total += 1
        if n_out != n_in:
            if n_out > n_in:
                self.padded += 1
            else:
                self.cropped += 1
        elif n_in != self.n_samples:
            self.own.append(n_in)

    def note(self) -> str | None:
        trained = f"{self.n_samples / self.sample_rate:g} s"
        parts = []
        if self.padded:
            how = "with silence" if self.pad == "silence" else "by repeating the clip"
            parts.append(f"padded {self.padded} of {self.total} clips to the model's trained {trained} {how} (--pad {self.pad})")
        if self.cropped:
            parts.append(f"cropped {self.cropped} of {self.total} clips to their first {trained} (--crop)")
        if self.own:
            lo, hi = min(self.own) / self.sample_rate, max(self.own) / self.sample_rate
            span = f"{lo:.2f} s" if lo == hi else f"{lo:.2f}-{hi:.2f} s"
            hints = [h for h, used in (("--pad silence|repeat pads short ones", self.pad),
                                       ("--crop cuts long ones", self.crop)) if not used]
            parts.append(f"{len(self.own)} of {self.total} clips ran at their own length ({span}), not the model's "
                         f"trained {trained}" + (f" ({'; '.join(hints)})" if hints else ""))
        return "; ".join(parts) or None


def too_short_message(path: str, n: int, min_samples: int, sample_rate: int, trained_s: float, pad: str | None) -> str:
    """The one-line error for a clip too short for the model (the wording of sp4sc.deploy.infer)."""
    fix = (f"pass --pad silence or --pad repeat to pad clips to the model's trained {trained_s:g} s"
           if pad is None else "the clip holds almost no audio; check the file")
    return (f"{path}: {n / sample_rate:.3f} s of audio, shorter than the {min_samples / sample_rate:.3f} s "
            f"the model needs; {fix}")
