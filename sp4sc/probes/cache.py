"""Embedding cache: window embeddings of each clip, per encoder, weights, δt and hop.

Layout under ``cache_dir``::

    <encoder>/<key digest>/manifest.json     key + one entry per file
    <encoder>/<key digest>/chunk_00000_<pid>.npy   float32 (windows, dim), many clips each

The key (:class:`EmbeddingKey`) holds the encoder name, what its weights are
(``sha256:<checkpoint hash>`` or ``random-init-seed<N>``), δt, hop and the
encoder's sample rate; a change to any of them gives another folder. Each
file entry records the audio file's size and modification time: a file that
changed is embedded again. Chunks are written atomically first and the
manifest (also atomic) is updated after each chunk, so an interrupted run
resumes where it stopped and a reader never sees half an entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sp4sc.errors import Sp4scError
from sp4sc.fileio import atomic_path, write_json

FORMAT = 1


@dataclass(frozen=True)
class EmbeddingKey:
    """What the embeddings depend on, except the audio file itself.

    Attributes:
        encoder: registry name.
        weights: ``sha256:<hash>`` of the checkpoint, or ``random-init-seed<N>``.
        dt: window length, seconds.
        hop: hop between windows, seconds.
        sample_rate: the encoder's input rate, Hz.
    """

    encoder: str
    weights: str
    dt: float
    hop: float
    sample_rate: int

    def digest(self) -> str:
        """16 hex digits naming the cache folder."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_stamp(path: Path) -> dict[str, int]:
    """Size and modification time of an audio file (what invalidates its entry)."""
    try:
        st = path.stat()
    except OSError as exc:
        raise Sp4scError(f"{path}: cannot read the audio file ({exc.strerror}); check --root") from exc
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


class EmbeddingCache:
    """Window embeddings of audio files for one :class:`EmbeddingKey`.

    Args:
        cache_dir: top folder of the embedding caches.
        key: what the embeddings depend on.
        dim: embedding size (checked against existing chunks).
    """

    def __init__(self, cache_dir: str | os.PathLike, key: EmbeddingKey, dim: int) -> None:
        self.key = key
        self.dim = int(dim)
        self.folder = Path(cache_dir) / key.encoder / key.digest()
        self.manifest_path = self.folder / "manifest.json"
        self.entries: dict[str, dict] = {}
        self._chunks: dict[str, np.ndarray] = {}
        if self.manifest_path.exists():
            try:
                manifest = json.loads(self.manifest_path.read_text())
            except (OSError, ValueError) as exc:
                raise Sp4scError(f"{self.manifest_path}: unreadable cache manifest ({exc}); delete the folder {self.folder}") from exc
            if manifest.get("key") != asdict(key) or manifest.get("dim") != self.dim:
                raise Sp4scError(f"{self.manifest_path}: cache manifest does not match its key; delete the folder {self.folder}")
            self.entries = dict(manifest.get("files", {}))

    def __len__(self) -> int:
        return len(self.entries)

    def valid(self, name: str, stamp: dict[str, int]) -> bool:
        """True when ``name`` is cached for exactly this file version."""
        entry = self.entries.get(name)
        return entry is not None and entry["size"] == stamp["size"] and entry["mtime_ns"] == stamp["mtime_ns"]

    def get(self, name: str) -> np.ndarray:
        """Window embeddings of a cached file, float32 ``(n_windows, dim)`` (memory-mapped)."""
        entry = self.entries[name]
        chunk = self._chunks.get(entry["chunk"])
        if chunk is None:
            path = self.folder / entry["chunk"]
            try:
                chunk = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise Sp4scError(f"{path}: unreadable cache chunk ({exc}); delete the folder {self.folder}") from exc
            self._chunks[entry["chunk"]] = chunk
        return chunk[entry["offset"] : entry["offset"] + entry["count"]]

    def add(self, items: list[tuple[str, dict[str, int], np.ndarray]]) -> None:
        """Store a chunk of files: ``(name, stamp, embeddings (n_windows, dim))`` each.

        The chunk file is written atomically, then the manifest.
        """
        if not items:
            return
        arrays = [np.asarray(a, dtype=np.float32) for _, _, a in items]
        for (name, _, _), a in zip(items, arrays):
            if a.ndim != 2 or a.shape[1] != self.dim:
                raise Sp4scError(f"{name}: embeddings of shape {a.shape}, expected (windows, {self.dim})")
        self.folder.mkdir(parents=True, exist_ok=True)
        n = len({e["chunk"] for e in self.entries.values()})
        chunk_name = f"chunk_{n:05d}_{os.getpid()}_{len(items)}.npy"
        while (self.folder / chunk_name).exists():
            n += 1
            chunk_name = f"chunk_{n:05d}_{os.getpid()}_{len(items)}.npy"
        data = np.concatenate(arrays, axis=0)
        with atomic_path(self.folder / chunk_name) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, data)
        offset = 0
        for (name, stamp, _), a in zip(items, arrays):
            self.entries[name] = {
                "size": stamp["size"],
                "mtime_ns": stamp["mtime_ns"],
                "chunk": chunk_name,
                "offset": offset,
                "count": int(a.shape[0]),
            }
            offset += a.shape[0]
        self._write_manifest()

    def _write_manifest(self) -> None:
        write_json(
            self.manifest_path,
            {"format": FORMAT, "key": asdict(self.key), "dim": self.dim, "files": self.entries},
        )
