"""The edge side's audio loading and log-mel front end, in numpy (no torch, no librosa).

This is the numpy twin of ``sp4sc.frontend.audio.load_audio`` and ``sp4sc.frontend.features.LogMel``:
an exported model folder (``sp4sc export``) holds ``frontend.json`` with the
front end's settings, and these functions turn audio files into the model's
input ``(batch, 1, frames, mels)`` exactly as the library does (the tests check
the log-mels equal to 0.01 dB and the class probabilities to 1e-4).

Dependencies: numpy and soundfile; ``soxr`` only when a file's sample rate
differs from the front end's (the library resamples with soxr too, so both sides
compute the same samples); ``scipy`` when installed for its float32 FFT (about 3x
faster; frames whose bands span more than 90 dB are redone in float64).

Nothing here imports sp4sc: the edge device installs only this folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
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
        workers: threads (0: the cores this process may use); each takes a run of frames through
            window, FFT, power and mel product. At batch 1 the cores are otherwise idle while the
            front end runs.
    """

    def __init__(self, cfg: dict[str, Any], workers: int = 0):
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
        if not workers:
            workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.workers = max(1, int(workers))
        self._rfft, self.dtype = _real_fft()  # one thread per call: the frames are split over the workers
        self._pool = None  # a ThreadPoolExecutor of workers - 1 threads, made on first use
        self._rfft64 = _real_fft64(self.workers)
        self._window = self.window.astype(self.dtype)
        self._mel = _BandedMel(self.mel_fb)

    def n_frames(self, n_samples: int) -> int:
        return 1 + n_samples // self.hop

    def _buffers(self, n_frames: int) -> dict[str, np.ndarray]:
        """Work arrays for ``n_frames`` frames, kept between calls (fresh pages cost more than the maths)."""
        cached = getattr(self, "_buf", None)
        if cached is None or cached["frames"].shape[0] != n_frames:
            bins = self.n_fft // 2 + 1
            cached = {
                "frames": np.empty((n_frames, self.n_fft), dtype=self.dtype),
                "sq": np.empty((n_frames, bins, 2), dtype=self.dtype),
                "power": np.empty((n_frames, bins), dtype=np.float32),
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
        # frames split into one run per worker (numpy, scipy.fft and BLAS release the GIL)
        step = -(-n_frames // self.workers) if n_frames >= MIN_FRAMES_PER_WORKER * self.workers else n_frames
        runs = [(r, min(r + step, n_frames)) for r in range(0, n_frames, step)]
        if len(runs) > 1 and self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=self.workers - 1, thread_name_prefix="edge_frontend")
        for i, x in enumerate(wav):  # one clip at a time keeps memory flat; buffers are reused
            x = np.pad(x.astype(self.dtype, copy=False), pad, mode="reflect")
            frames = np.lib.stride_tricks.sliding_window_view(x, self.n_fft)[:: self.hop]  # (frames, n_fft)
            mel = np.empty((n_frames, self.n_mels), dtype=np.float32)
            done = [self._pool.submit(self._mel_rows, frames, buf, a, b, mel) for a, b in runs[1:]]
            self._mel_rows(frames, buf, *runs[0], mel)
            for f in done:
                f.result()
            if self.dtype == np.float32:
                self._refine(x, mel)
            np.maximum(mel, np.float32(self.amin), out=mel)
            np.log10(mel, out=mel)
            np.multiply(mel, np.float32(10.0), out=out[i])
        return out  # (batch, frames, mels)

    def _mel_rows(self, frames: np.ndarray, buf: dict[str, np.ndarray], a: int, b: int, mel: np.ndarray) -> None:
        """Mel power of frames ``a:b`` into ``mel[a:b]``: window, rfft, power, banded mel product."""
        windowed = np.multiply(frames[a:b], self._window, out=buf["frames"][a:b])
        spec = self._rfft(windowed)  # (b - a, n_fft // 2 + 1) complex, one call for the run
        parts = spec.view(self.dtype).reshape(b - a, -1, 2)  # (frames, bins, [re, im])
        sq = np.square(parts, out=buf["sq"][a:b])
        power = np.add(sq[..., 0], sq[..., 1], out=buf["power"][a:b], casting="same_kind")
        mel[a:b] = self._mel(power)  # (frames, mels) float32

    def _refine(self, x: np.ndarray, mel: np.ndarray) -> None:
        """Recompute in float64 the frames whose mel bands span more than :data:`FLOAT32_RANGE`.

        A float32 FFT's rounding error is relative to the frame's energy: about -120 dB below the
        loudest band it reaches 0.01 dB (an ESC-10 dog bark: 0.036 dB at -120 dB). Bands below
        ``amin`` are clamped anyway, so only the span above it counts.
        """
        top = mel.max(axis=1)
        low = np.maximum(mel.min(axis=1), np.float32(self.amin))
        idx = np.flatnonzero(top > FLOAT32_RANGE * low)
        if idx.size == 0:
            return
        x64 = x.astype(np.float64)
        frames = np.lib.stride_tricks.sliding_window_view(x64, self.n_fft)[:: self.hop][idx] * self.window
        spec = self._rfft64(frames)  # (n, bins) complex128
        mel[idx] = self._mel(np.square(spec.real) + np.square(spec.imag), np.float64)


def _real_fft64(workers: int = 1):
    """float64 rfft over the last axis: scipy.fft's (``workers`` threads when there are many frames) or numpy's."""
    try:
        import scipy.fft as sfft
    except ImportError:
        return lambda frames: np.fft.rfft(frames, axis=-1)
    return lambda frames: sfft.rfft(frames, axis=-1, overwrite_x=True, workers=workers if frames.shape[0] >= 64 else 1)


MIN_FRAMES_PER_WORKER = 64  # shorter inputs run on one thread (a hand-off costs more than it saves)

# float32 FFT frames whose mel bands span more than this power ratio (90 dB) are redone in float64
FLOAT32_RANGE = np.float32(1e9)


def _real_fft():
    """``(rfft over the last axis, frame dtype)``: scipy.fft in float32 when installed (pocketfft's float32
    kernels: about 5x numpy's float64 rfft for 431 frames of 2,048), else numpy's float64 rfft.

    float32 keeps the log-mels within 0.01 dB of the library's (tests/test_edge.py, every preset): the FFT's
    rounding error is relative to the frame's energy, far below the quiet bins that set the dB floor.
    """
    try:
        import scipy.fft as sfft
    except ImportError:  # the edge runner needs only numpy; scipy is a speed-up
        return (lambda frames: np.fft.rfft(frames, axis=-1)), np.float64
    return (lambda frames: sfft.rfft(frames, axis=-1, overwrite_x=True)), np.float32


class _BandedMel:
    """``power @ fb`` over the filters' band: groups of adjacent filters times only the FFT bins they
    cover (each triangular filter spans a contiguous run of bins, so a group's rows outside that run
    are zero), as small matrix products. At 256 mels about 1/8 of the dense product's multiply-adds.

    Each product is kept under OpenBLAS's threading threshold (m x n x k < 65,536 x 4): a group holds
    filters while ``bins x filters <= MAX_AREA`` and frames go ``ROWS`` at a time. Threaded small
    products were 100x slower on a busy 2-core machine (their threads wait for a free core).
    """

    MAX_AREA = 1024  # bins x filters of one group
    ROWS = 128  # frames per product: 128 x 1024 = 131,072 < 262,144

    def __init__(self, fb: np.ndarray):
        self.fb = np.ascontiguousarray(fb, dtype=np.float32)  # (bins, mels)
        support = []
        for m in range(fb.shape[1]):
            rows = np.flatnonzero(self.fb[:, m] != 0)
            support.append((int(rows[0]), int(rows[-1]) + 1) if rows.size else None)
        self.parts = []
        a = 0
        while a < fb.shape[1]:
            b, lo, hi = a, None, None
            while b < fb.shape[1]:
                s = support[b]
                nlo = lo if s is None else (s[0] if lo is None else min(lo, s[0]))
                nhi = hi if s is None else (s[1] if hi is None else max(hi, s[1]))
                if b > a and nlo is not None and (nhi - nlo) * (b + 1 - a) > self.MAX_AREA:
                    break
                lo, hi, b = nlo, nhi, b + 1
            lo, hi = (lo, hi) if lo is not None else (0, 0)
            w = np.ascontiguousarray(self.fb[lo:hi, a:b])
            self.parts.append((a, b, lo, hi, {np.float32: w, np.float64: w.astype(np.float64)}))
            a = b

    def __call__(self, power: np.ndarray, dtype=np.float32) -> np.ndarray:
        # (frames, bins) -> (frames, mels)
        out = np.zeros((power.shape[0], self.fb.shape[1]), dtype=dtype)
        for r in range(0, power.shape[0], self.ROWS):
            block = power[r : r + self.ROWS]
            for a, b, lo, hi, w in self.parts:
                if hi > lo:
                    out[r : r + self.ROWS, a:b] = block[:, lo:hi] @ w[dtype]  # (rows, filters)
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
