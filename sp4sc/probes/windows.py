"""Temporal support: cut a clip into windows of δt seconds.

The rule (the same for every encoder and dataset):

* Windows are ``win = round(δt · sr)`` samples long and start every
  ``hop = round(hop_s · sr)`` samples (hop = δt unless ``--hop`` is given):
  starts 0, hop, 2·hop, ...
* Every window that lies wholly inside the clip is kept.
* Of the windows that run past the end of the clip, only the first is
  considered: it is kept, zero-padded at the end, when it holds at least
  half a window of audio (``2 · (n - start) >= win``); otherwise it is dropped.
* A clip shorter than half a window still gives one window: the whole clip,
  zero-padded (so no clip ever disappears from the study; with δt = 10 s a
  3.6 s ESC clip is 36 % audio).

Examples (hop = δt): a 10 s clip gives 10 / 5 / 3 / 2 / 1 windows at
δt = 1 / 2 / 3 / 5 / 10 s (at δt = 3 the 1 s tail is dropped); a 7.2 s clip
gives 7 / 4 / 2 / 1 / 1 (the 1.2 s tail is kept at δt = 2, the 7.2 s clip is
one padded window at δt = 10).
"""

from __future__ import annotations

import numpy as np

from sp4sc.errors import Sp4scError


def window_samples(dt: float, sample_rate: int) -> int:
    """Samples per window of ``dt`` seconds."""
    n = int(round(dt * sample_rate))
    if dt <= 0 or n < 1:
        raise Sp4scError(f"--dt {dt:g}: window length must be positive")
    return n


def window_starts(n_samples: int, win: int, hop: int) -> list[int]:
    """Start sample of each kept window (see the module docstring for the rule).

    Args:
        n_samples: clip length in samples.
        win: window length in samples.
        hop: hop in samples.
    """
    if win < 1 or hop < 1:
        raise Sp4scError(f"windows: length ({win}) and hop ({hop}) must be at least one sample")
    if n_samples <= 0:
        raise Sp4scError("windows: empty clip")
    starts = []
    start = 0
    while start + win <= n_samples:
        starts.append(start)
        start += hop
    # ``start`` is now the first window that runs past the end (if it starts inside the clip).
    if start < n_samples and 2 * (n_samples - start) >= win:
        starts.append(start)
    if not starts:  # clip shorter than half a window: one zero-padded window
        starts.append(0)
    return starts


def n_windows(n_samples: int, win: int, hop: int) -> int:
    """Number of windows :func:`cut_windows` gives."""
    return len(window_starts(n_samples, win, hop))


def cut_windows(wave: np.ndarray, win: int, hop: int) -> np.ndarray:
    """Cut a mono clip into windows.

    Args:
        wave: float32 ``(samples,)``.
        win: window length in samples.
        hop: hop in samples.

    Returns:
        float32 ``(n_windows, win)``; a tail window is zero-padded.
    """
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise Sp4scError(f"windows: expected a mono clip (samples,), got shape {wave.shape}")
    starts = window_starts(len(wave), win, hop)
    out = np.zeros((len(starts), win), dtype=np.float32)
    for i, s in enumerate(starts):
        piece = wave[s : s + win]
        out[i, : len(piece)] = piece
    return out
