"""Audio reading: any soundfile format to float32 mono at a given rate and length.

``load_audio`` reads wav, flac and ogg (16/24/32-bit integer or float) with
soundfile, mixes to mono by averaging channels, resamples with soxr when the
file's rate differs from the requested one (said once per process and rate
pair), and pads with zeros or crops to a duration. Anything unreadable is a
:class:`sp4sc.errors.Sp4scError` that names the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from sp4sc.errors import Sp4scError
from sp4sc.log import logger, note_once

# A clip shorter than this fraction of the requested duration gets a warning
# when padded (ESC-10's 3.6-7.2 s clips padded to 5 s are not "far shorter").
FAR_SHORTER = 0.5


def audio_info(path: str | os.PathLike) -> tuple[int, int, int]:
    """``(sample_rate, frames, channels)`` of an audio file, read from its header."""
    import soundfile as sf

    path = Path(path)
    _check_file(path)
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError
        raise Sp4scError(f"{path}: not a readable audio file ({_short(exc)}); re-export it as wav, flac or ogg") from exc
    return int(info.samplerate), int(info.frames), int(info.channels)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _check_file(path: Path) -> None:
    if not path.exists():
        raise Sp4scError(f"{path}: no such audio file; check the path and the dataset root")
    if path.is_dir():
        raise Sp4scError(f"{path}: is a folder, not an audio file")
    if path.stat().st_size == 0:
        raise Sp4scError(f"{path}: the file is empty (0 bytes); re-copy or re-download it")


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read a file as float32 mono at its own rate: ``(samples,), sample_rate``."""
    import soundfile as sf

    path = Path(path)
    _check_file(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:
        with open(path, "rb") as fh:
            head = fh.read(64)
        hint = " (it looks like a text file)" if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head) else ""
        raise Sp4scError(
            f"{path}: not a readable audio file{hint} ({_short(exc)}); re-export it as wav, flac or ogg"
        ) from exc
    if data.shape[0] == 0:
        raise Sp4scError(f"{path}: contains no audio samples; re-export or remove it from the list")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise Sp4scError(f"{path}: contains {bad} NaN/inf samples; the file is damaged, re-export it")
    # (samples, channels) -> (samples,)
    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32), int(sr)


def resample(x: np.ndarray, orig_sr: int, sample_rate: int) -> np.ndarray:
    """Resample float32 mono audio with soxr (high quality); a no-op at equal rates."""
    if orig_sr == sample_rate:
        return x
    import soxr

    note_once(
        f"resample:{orig_sr}:{sample_rate}",
        f"resampling audio from {orig_sr} Hz to {sample_rate} Hz (soxr, high quality)",
    )
    return np.ascontiguousarray(soxr.resample(x, orig_sr, sample_rate, quality="HQ"), dtype=np.float32)


def fit_length(x: np.ndarray, n_samples: int, *, name: str = "audio") -> np.ndarray:
    """Crop or zero-pad ``x`` to ``n_samples``; warn when it is far shorter."""
    if x.shape[0] >= n_samples:
        return x[:n_samples]
    if x.shape[0] < FAR_SHORTER * n_samples:
        logger.warning(
            "%s: %d samples, far shorter than the %d expected; padded with silence", name, x.shape[0], n_samples
        )
    out = np.zeros(n_samples, dtype=np.float32)
    out[: x.shape[0]] = x
    return out


def load_audio(path: str | os.PathLike, sample_rate: int, duration: float | None = None) -> np.ndarray:
    """Load a file as float32 mono at ``sample_rate``, padded or cropped to ``duration``.

    Args:
        path: wav, flac or ogg file.
        sample_rate: output rate, Hz; the file is resampled (soxr) when it differs.
        duration: seconds; ``None`` keeps the file's length.

    Returns:
        ``(samples,)`` float32.

    Raises:
        Sp4scError: the file is missing, empty, unreadable or holds NaN/inf.
    """
    x, sr = read_audio(path)
    x = resample(x, sr, int(sample_rate))
    if duration is not None:
        x = fit_length(x, int(round(duration * sample_rate)), name=str(path))
    return x


def load_batch(paths: Sequence[str | os.PathLike], sample_rate: int, duration: float) -> np.ndarray:
    """Load several files: ``(len(paths), round(duration * sample_rate))`` float32."""
    n = int(round(duration * sample_rate))
    out = np.empty((len(paths), n), dtype=np.float32)
    for i, p in enumerate(paths):
        out[i] = load_audio(p, sample_rate, duration)
    return out


def write_wav(path: str | os.PathLike, x: np.ndarray, sample_rate: int, subtype: str = "PCM_24") -> None:
    """Write float audio in ``[-1, 1]`` as a wav file, atomically (24-bit by default)."""
    import soundfile as sf

    from sp4sc.fileio import atomic_path

    with atomic_path(path) as tmp:
        sf.write(str(tmp), np.asarray(x, dtype=np.float32), int(sample_rate), subtype=subtype, format="WAV")


# ----------------------------------------------------------------------------- clip length at inference

PAD_MODES = ("silence", "repeat")


def fit_clip(x: np.ndarray, n_samples: int, *, pad: str | None = None, crop: bool = False) -> np.ndarray:
    """The clip length ``sp4sc infer``, ``sp4sc submit`` and the edge runner use.

    By default a clip keeps its own length (the models accept any number of
    frames, and padding a short clip with silence changes what the model hears).
    ``pad`` brings clips shorter than ``n_samples`` (the model's trained length) up
    to it: ``"silence"`` appends zeros, ``"repeat"`` repeats the clip from its start.
    ``crop`` cuts clips longer than ``n_samples`` to their first ``n_samples``.

    Raises:
        Sp4scError: an unknown ``pad`` mode.
    """
    if pad is not None and pad not in PAD_MODES:
        raise Sp4scError(f"--pad {pad!r}: choose one of {', '.join(PAD_MODES)} (or leave it out: own length)")
    n = x.shape[0]
    if crop and n > n_samples:
        return np.ascontiguousarray(x[:n_samples])
    if pad is not None and 0 < n < n_samples:
        if pad == "silence":
            return np.concatenate([x, np.zeros(n_samples - n, dtype=x.dtype)])
        return np.ascontiguousarray(np.tile(x, -(-n_samples // n))[:n_samples])
    return x


class ClipLengths:
    """Tally of clip lengths against the model's trained length; :meth:`note` says it once per run.

    Args:
        n_samples: the trained length in samples.
        sample_rate: Hz (for the message).
        pad: the ``--pad`` mode or None.
        crop: ``--crop``.
    """

    def __init__(self, n_samples: int, sample_rate: int, pad: str | None = None, crop: bool = False):
        self.n_samples, self.sample_rate, self.pad, self.crop = int(n_samples), int(sample_rate), pad, crop
        self.total = self.padded = self.cropped = 0
        self.own: list[int] = []  # lengths (samples) of clips that ran at a length other than the trained one

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
        """One line for the end of a run, or None when every clip ran at the trained length."""
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


__all__ = ["load_audio", "load_batch", "read_audio", "resample", "fit_length", "audio_info", "write_wav",
           "fit_clip", "ClipLengths", "PAD_MODES"]
