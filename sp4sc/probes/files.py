"""Window embeddings (and AudioSet tags) of given audio files: what ``sp4sc probe embed`` computes.

Each file is read at the encoder's rate (``sp4sc.frontend.audio.load_audio``: mono,
soxr resampling), cut into windows of δt with the study's rule
(:mod:`sp4sc.probes.windows`: window ``i`` starts at ``i · hop``; a tail
window is kept zero-padded when it holds at least half a window) and embedded
by a frozen encoder. Encoders with an AudioSet head (EfficientAT) also give
per-window logits; a file's tags are the top-K classes of the mean over its
windows of the per-window sigmoid probabilities (AudioSet is multi-label).

Outputs: :func:`to_json` (per file, per window lists) and :func:`save_npz`
(one atomic ``.npz``; see its docstring for the arrays).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sp4sc.errors import Sp4scError
from sp4sc.probes.bundle import EncoderBundle
from sp4sc.probes.windows import cut_windows, window_samples

LABEL_FILES = ("audioset_class_labels_indices.csv", "class_labels_indices.csv")


@dataclass
class FileEmbeddings:
    """Window embeddings of a list of files.

    Attributes:
        encoder: registry name of the encoder.
        weights: ``sha256:<checkpoint hash>`` or ``random-init-seed<N>``.
        random_init: the encoder had random weights.
        dt: window length, s.
        hop: hop between windows, s.
        sample_rate: the encoder's rate, Hz.
        dim: embedding size.
        files: the files, as given.
        embeddings: float32 ``(n_windows, dim)`` per file.
        logits: float32 ``(n_windows, n_logits)`` per file, or None (encoder without a head).
    """

    encoder: str
    weights: str
    random_init: bool
    dt: float
    hop: float
    sample_rate: int
    dim: int
    files: list[str] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)
    logits: list[np.ndarray] | None = None

    @property
    def windows(self) -> list[int]:
        """Windows per file."""
        return [len(e) for e in self.embeddings]

    def clip_probs(self) -> list[np.ndarray]:
        """Per file, the mean over windows of the sigmoid of the window logits ``(n_logits,)``."""
        if self.logits is None:
            raise Sp4scError(f"{self.encoder}: has no classification head; tags need an AudioSet-trained encoder")
        return [(1.0 / (1.0 + np.exp(-lg.astype(np.float64)))).mean(axis=0) for lg in self.logits]


def check_files(paths: list[str | os.PathLike]) -> None:
    """Refuse missing inputs before any model is built (one line naming the file)."""
    if not paths:
        raise Sp4scError("FILE: give at least one audio file")
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise Sp4scError(f"{path}: audio file not found; check the path")
        if path.is_dir():
            raise Sp4scError(f"{path}: is a folder; give audio files (wav, flac, ogg)")


def embed_files(
    bundle: EncoderBundle,
    paths: list[str | os.PathLike],
    *,
    dt: float,
    hop: float | None = None,
    batch_size: int = 32,
) -> FileEmbeddings:
    """Embed every window of every file (and keep the logits when the encoder has a head).

    Args:
        bundle: a built encoder.
        paths: audio files.
        dt: window length, s.
        hop: hop between windows, s (default ``dt``).
        batch_size: windows per encoder forward.

    Returns:
        the embeddings (and logits) per file.
    """
    from sp4sc.frontend.audio import load_audio
    from sp4sc.probes.sweep import check_dts

    hop = dt if hop is None else hop
    if hop <= 0:
        raise Sp4scError(f"--hop {hop:g}: must be positive")
    if batch_size < 1:
        raise Sp4scError(f"--batch-size {batch_size}: must be positive")
    check_dts(bundle, [dt])
    check_files(paths)
    win = window_samples(dt, bundle.sample_rate)
    hop_n = window_samples(hop, bundle.sample_rate)
    with_logits = bundle.n_logits > 0
    out = FileEmbeddings(
        encoder=bundle.name, weights=bundle.identity, random_init=bool(bundle.random_init), dt=float(dt),
        hop=float(hop), sample_rate=int(bundle.sample_rate), dim=int(bundle.dim),
        logits=[] if with_logits else None,
    )
    for p in paths:
        windows = cut_windows(load_audio(p, bundle.sample_rate), win, hop_n)  # (n_windows, win)
        embs, logits = [], []
        for i in range(0, len(windows), batch_size):
            x = torch.from_numpy(windows[i : i + batch_size])  # (batch, win)
            if with_logits:
                e, lg = bundle.embed_with_logits(x)  # (batch, dim), (batch, n_logits)
                logits.append(lg.cpu().numpy())
            else:
                e = bundle.embed(x)  # (batch, dim)
            embs.append(e.cpu().numpy())
        out.files.append(str(p))
        out.embeddings.append(np.concatenate(embs, axis=0).astype(np.float32))
        if with_logits:
            out.logits.append(np.concatenate(logits, axis=0).astype(np.float32))
    return out


# ----------------------------------------------------------------------------- tags
def default_labels_path(ckpt: str | os.PathLike | None) -> Path | None:
    """AudioSet's label file beside a checkpoint (``audioset_class_labels_indices.csv`` or
    ``class_labels_indices.csv``), or None."""
    if ckpt is None:
        return None
    folder = Path(ckpt).parent
    for name in LABEL_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def load_labels(path: str | os.PathLike, n: int) -> list[str]:
    """Class names from AudioSet's ``class_labels_indices.csv`` (columns index, mid, display_name).

    Args:
        path: the local CSV (never downloaded).
        n: number of classes the encoder predicts; rows must be indices ``0 .. n-1`` in order.
    """
    path = Path(path)
    fix = f"pass --labels with AudioSet's {n}-row class_labels_indices.csv"
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError as exc:
        raise Sp4scError(f"{path}: label file not found; {fix}") from exc
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise Sp4scError(f"{path}: unreadable label file ({exc}); {fix}") from exc
    if not rows or "display_name" not in rows[0] or "index" not in rows[0]:
        raise Sp4scError(f"{path}: no 'index' and 'display_name' columns; {fix}")
    if len(rows) != n:
        raise Sp4scError(f"{path}: {len(rows)} classes, the encoder predicts {n}; {fix}")
    for i, row in enumerate(rows):
        if str(row["index"]).strip() != str(i):
            raise Sp4scError(f"{path}: row {i + 2} has index {row['index']!r}, expected {i}; {fix}")
    return [row["display_name"] for row in rows]


def top_tags(result: FileEmbeddings, labels: list[str], k: int) -> list[list[dict]]:
    """Top-``k`` AudioSet tags per file: ``[{"label", "index", "prob"}, ...]``, most probable first."""
    if k < 1:
        raise Sp4scError(f"--tags {k}: must be at least 1")
    tags = []
    for probs in result.clip_probs():
        order = np.argsort(-probs, kind="stable")[: min(k, len(probs))]
        tags.append([{"label": labels[j], "index": int(j), "prob": float(probs[j])} for j in order])
    return tags


# ----------------------------------------------------------------------------- outputs
def to_json(result: FileEmbeddings, tags: list[list[dict]] | None = None) -> dict:
    """The ``--json`` document: per file, per window embedding lists (and tags)."""
    doc = {
        "encoder": result.encoder,
        "weights": result.weights,
        "random_init": result.random_init,
        "dt": result.dt,
        "hop": result.hop,
        "sample_rate": result.sample_rate,
        "dim": result.dim,
        "files": list(result.files),
        "windows": result.windows,
        "embeddings": [e.tolist() for e in result.embeddings],
    }
    if tags is not None:
        doc["tags"] = tags
    if result.random_init:
        from sp4sc.probes.sweep import RANDOM_INIT_NOTE

        doc["note"] = RANDOM_INIT_NOTE
    return doc


def save_npz(path: str | os.PathLike, result: FileEmbeddings, tags: list[list[dict]] | None = None) -> Path:
    """Write the embeddings to an ``.npz`` atomically (temporary file, then rename).

    Arrays (all readable with ``np.load(path)``, no pickle):

    * ``embeddings`` float32 ``(total windows, dim)``: every file's windows, files in order;
    * ``counts`` int64 ``(files,)``: windows per file (``np.split(embeddings, np.cumsum(counts)[:-1])``);
    * ``window_start_s`` float64 ``(total windows,)``: start of each window in its file;
    * ``files`` str ``(files,)``; ``encoder``, ``weights`` str; ``dt``, ``hop`` float; ``sample_rate`` int;
    * ``logits`` float32 ``(total windows, n_logits)`` when the encoder has a head;
    * with tags: ``tag_labels`` str, ``tag_index`` int64 and ``tag_prob`` float32, each ``(files, K)``.
    """
    from sp4sc.fileio import atomic_path

    path = Path(path)
    if path.suffix != ".npz":
        raise Sp4scError(f"--out {path}: must end in .npz")
    counts = np.array(result.windows, dtype=np.int64)
    hop_n = window_samples(result.hop, result.sample_rate)  # window i starts at sample i * hop_n
    arrays: dict[str, np.ndarray] = {
        "embeddings": np.concatenate(result.embeddings, axis=0).astype(np.float32),
        "counts": counts,
        "window_start_s": np.concatenate([np.arange(c) * hop_n / result.sample_rate for c in counts]).astype(np.float64),
        "files": np.array(result.files, dtype=str),
        "encoder": np.array(result.encoder),
        "weights": np.array(result.weights),
        "dt": np.array(result.dt, dtype=np.float64),
        "hop": np.array(result.hop, dtype=np.float64),
        "sample_rate": np.array(result.sample_rate, dtype=np.int64),
    }
    if result.logits is not None:
        arrays["logits"] = np.concatenate(result.logits, axis=0).astype(np.float32)
    if tags is not None:
        arrays["tag_labels"] = np.array([[t["label"] for t in ts] for ts in tags], dtype=str)
        arrays["tag_index"] = np.array([[t["index"] for t in ts] for ts in tags], dtype=np.int64)
        arrays["tag_prob"] = np.array([[t["prob"] for t in ts] for ts in tags], dtype=np.float32)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return path
