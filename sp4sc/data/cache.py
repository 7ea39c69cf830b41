"""Log-mel feature cache: float16, memory-mapped, resumable, invalidated per file.

``build_cache(root, paths, cfg, cache_dir)`` computes the log-mel features of
``paths`` (relative to ``root``) with front end ``cfg`` once and returns a
:class:`FeatureCache` whose items are memory-mapped ``(frames, mels)`` float16
arrays: nothing is loaded whole (TAU2020 dev at the sp4asc front end is about
5 GB).

Layout under ``cache_dir``::

    <cfg.name>-<cfg.digest()>/<key>/      key = hash of the root and the path list
        manifest.json                     written last, atomically: the cache is complete
        features-<sig>.npy                (N, frames, mels) float16, np.load(mmap_mode="r")
        features-<sig>.partial.npy        being filled (resumable)
        progress.json                     chunks completed so far in the partial array

The manifest holds the front-end config and its digest, the file list with
each file's size and mtime, and the array shape. On every call the files are
stat'ed: a complete, matching cache is opened as is. Otherwise the cache is
rebuilt, and each clip whose file is unchanged (same size and mtime) is copied
from any complete cache of the same front end and root (any path list) instead
of being recomputed: a changed config starts a new folder (the old one stays
valid), a changed file recomputes only that file.

Resume: the partial array is flushed and ``progress.json`` rewritten
atomically after every chunk of ``chunk_size`` clips; a killed run continues
from the last completed chunk and produces the same array as an uninterrupted
run (the computation is deterministic per clip and does not depend on chunk
boundaries). For tests, ``SP4SC_TEST_KILL_AFTER_CHUNKS=n`` makes the process
SIGKILL itself right after committing its n-th chunk.

Parallelism: on the CPU, a pool of worker processes (one per core by default,
one torch thread each, so OpenMP never oversubscribes a busy machine) decodes
and computes one clip at a time, one chunk ahead of the writer. With a GPU,
worker threads decode (soundfile and soxr release the GIL) and the log-mel
runs batched on the GPU. Per-clip results do not depend on chunking.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from sp4sc.errors import Sp4scError
from sp4sc.cpu import cores
from sp4sc.frontend.features import FrontEndConfig
from sp4sc.fileio import _explain_oserror, write_json
from sp4sc.log import logger

FORMAT = 1
KILL_ENV = "SP4SC_TEST_KILL_AFTER_CHUNKS"
DEFAULT_CHUNK = 32


class FeatureCache:
    """A complete cache: ``len``, ``[i]`` -> memory-mapped ``(frames, mels)`` float16.

    Attributes:
        dir: the cache folder.
        paths: clip paths (relative to the dataset root), in row order.
        cfg: the front end.
        shape: ``(N, frames, mels)``.
    """

    def __init__(self, dir: str | os.PathLike):
        self.dir = Path(dir)
        manifest_path = self.dir / "manifest.json"
        try:
            m = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise Sp4scError(f"{manifest_path}: not a complete feature cache ({exc}); rebuild it with `sp4sc cache`") from exc
        self.manifest = m
        self.paths: list[str] = [f["path"] for f in m["files"]]
        self.cfg = FrontEndConfig.from_dict(m["cfg"])
        self.shape: tuple[int, int, int] = tuple(m["shape"])  # type: ignore[assignment]
        self.array_path = self.dir / m["array"]
        self._arr: np.ndarray | None = None
        self._row: dict[str, int] | None = None

    @property
    def array(self) -> np.ndarray:
        """The ``(N, frames, mels)`` float16 memmap (opened on first use, read-only)."""
        if self._arr is None:
            arr = np.load(self.array_path, mmap_mode="r")
            if arr.shape != self.shape or arr.dtype != np.float16:
                raise Sp4scError(f"{self.array_path}: shape {arr.shape} {arr.dtype} disagrees with the manifest; delete {self.dir}")
            self._arr = arr
        return self._arr

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int) -> np.ndarray:
        return self.array[i]

    def row(self, path: str) -> int:
        """Row of a clip path."""
        if self._row is None:
            self._row = {p: i for i, p in enumerate(self.paths)}
        try:
            return self._row[path]
        except KeyError:
            raise Sp4scError(f"{path}: not in the feature cache {self.dir}") from None

    def __getstate__(self) -> dict:
        # DataLoader workers and DDP ranks reopen the memmap instead of pickling its content.
        state = self.__dict__.copy()
        state["_arr"] = None
        return state

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.dir)!r}, shape={self.shape}, front end {self.cfg.name})"


# ---------------------------------------------------------------------------- building


def _stat(root: Path, paths: Sequence[str]) -> list[dict]:
    files, missing = [], []
    for p in paths:
        try:
            st = os.stat(root / p)
        except OSError:
            missing.append(p)
            continue
        files.append({"path": p, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise Sp4scError(f"{root}: {len(missing)} audio file{'s are' if len(missing) > 1 else ' is'} missing ({shown})")
    return files


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def cache_folder(root: str | os.PathLike, paths: Sequence[str], cfg: FrontEndConfig, cache_dir: str | os.PathLike) -> Path:
    """Folder of the cache of these paths under this front end."""
    key = _hash({"root": str(Path(root).resolve()), "paths": list(paths)})
    return Path(cache_dir).expanduser() / f"{cfg.name}-{cfg.digest()}" / key


def _reusable(folder: Path, root: Path, cfg: FrontEndConfig, files: list[dict]) -> dict[str, tuple[Path, int]]:
    """Unchanged clips available in complete caches of the same front end and root: path -> (array, row)."""
    wanted = {(f["path"], f["size"], f["mtime_ns"]) for f in files}
    found: dict[str, tuple[Path, int]] = {}
    for manifest_path in sorted(folder.parent.parent.glob(f"*-{cfg.digest()}/*/manifest.json")):
        try:
            m = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            continue
        if m.get("format") != FORMAT or m.get("digest") != cfg.digest() or m.get("root") != str(root.resolve()):
            continue
        arr = manifest_path.parent / m["array"]
        if not arr.exists():
            continue
        for i, f in enumerate(m["files"]):
            if (f["path"], f["size"], f["mtime_ns"]) in wanted:
                found.setdefault(f["path"], (arr, i))
    return found


def _progress_bar(total: int, enabled: bool, label: str):
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True), transient=False)
    bar.start()
    bar.add_task(label, total=total)
    return bar


def _chunks(todo: list[int], size: int) -> list[list[int]]:
    return [todo[i : i + size] for i in range(0, len(todo), size)]


def build_cache(
    root: str | os.PathLike,
    paths: Sequence[str],
    cfg: FrontEndConfig,
    cache_dir: str | os.PathLike,
    *,
    workers: int | None = None,
    progress: bool = True,
    device: str | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> FeatureCache:
    """Compute (or reuse) the log-mel features of ``paths`` and return the cache.

    Args:
        root: dataset root; ``paths`` are relative to it.
        paths: clip paths, in the order of the cache rows (no duplicates).
        cfg: front end; audio is resampled, padded or cropped to it.
        cache_dir: where caches live (see the module docstring for the layout).
        workers: CPU worker processes (GPU: decoding threads); None: one per core; 0: inline.
        progress: show a progress bar on stderr.
        device: torch device of the log-mel; None: CUDA when available, else CPU.
        chunk_size: clips per chunk (the unit of resumption).

    Returns:
        The complete cache (memory-mapped).

    Raises:
        Sp4scError: missing or unreadable audio (naming the file), duplicate paths.
    """
    root = Path(root).expanduser()
    paths = list(paths)
    if len(set(paths)) != len(paths):
        dup = next(p for i, p in enumerate(paths) if p in paths[:i])
        raise Sp4scError(f"{dup}: listed twice in the clips to cache")
    if not paths:
        raise Sp4scError(f"{root}: no clips to cache")
    folder = cache_folder(root, paths, cfg, cache_dir)
    files = _stat(root, paths)
    sig = _hash({"digest": cfg.digest(), "files": files})
    manifest_path = folder / "manifest.json"
    if manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text())
        except ValueError:
            old = {}
        if old.get("format") == FORMAT and old.get("signature") == sig and (folder / old.get("array", "")).exists():
            return FeatureCache(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # read-only or full disk: one line, not a traceback
        raise _explain_oserror(folder, exc) from exc
    shape = (len(paths), cfg.n_frames, cfg.n_mels)
    partial = folder / f"features-{sig}.partial.npy"
    progress_path = folder / "progress.json"

    # Plan: rows reusable from complete caches are copied; the rest is computed in chunks.
    reuse = _reusable(folder, root, cfg, files)
    todo = [i for i, p in enumerate(paths) if p not in reuse]
    chunks = _chunks(todo, chunk_size)
    done = 0
    state = {}
    if progress_path.exists() and partial.exists():
        try:
            state = json.loads(progress_path.read_text())
        except ValueError:
            state = {}
    if state.get("signature") == sig and state.get("chunk_size") == chunk_size and state.get("todo") == _hash(todo):
        done = int(state.get("done_chunks", 0))
        arr = np.load(partial, mmap_mode="r+")
        logger.info("feature cache %s: resuming after %d of %d chunks", folder, done, len(chunks))
    else:
        for stale in folder.glob("features-*.partial.npy"):
            stale.unlink()
        try:
            arr = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=shape)
            _reserve(partial)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise _explain_oserror(folder, exc) from exc
        _copy_rows(arr, paths, reuse)  # unchanged clips, one row at a time (no big reads)
        arr.flush()
        write_json(progress_path, {"signature": sig, "chunk_size": chunk_size, "todo": _hash(todo), "done_chunks": 0})
        if reuse:
            logger.info("feature cache %s: %d clips reused, %d to compute", folder, len(reuse), len(todo))

    kill_after = int(os.environ.get(KILL_ENV, "0") or 0)
    bar = _progress_bar(len(paths), progress, f"log-mel {cfg.name}")
    if bar is not None:
        bar.update(bar.task_ids[0], completed=len(paths) - len(todo) + sum(len(c) for c in chunks[:done]))
    try:
        computed = 0
        for k, (idx, feats) in enumerate(_compute_chunks(root, paths, chunks[done:], cfg, workers, device), start=done):
            if idx[-1] - idx[0] + 1 == len(idx):  # contiguous rows
                arr[idx[0] : idx[-1] + 1] = feats
            else:
                arr[idx] = feats
            arr.flush()
            write_json(progress_path, {"signature": sig, "chunk_size": chunk_size, "todo": _hash(todo), "done_chunks": k + 1})
            computed += 1
            if bar is not None:
                bar.update(bar.task_ids[0], advance=len(idx))
            if kill_after and computed >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
    finally:
        if bar is not None:
            bar.stop()
    del arr
    final = folder / f"features-{sig}.npy"
    os.replace(partial, final)
    manifest = {
        "format": FORMAT,
        "signature": sig,
        "digest": cfg.digest(),
        "cfg": cfg.to_dict(),
        "root": str(root.resolve()),
        "array": final.name,
        "dtype": "float16",
        "shape": list(shape),
        "files": files,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(manifest_path, manifest)
    progress_path.unlink(missing_ok=True)
    for old_arr in folder.glob("features-*.npy"):
        if old_arr.name != final.name and not old_arr.name.endswith(".partial.npy"):
            old_arr.unlink(missing_ok=True)
    return FeatureCache(folder)


def _reserve(path: Path) -> None:
    """Allocate the disk blocks of a (sparse) memory-mapped file now: a full disk is then an ENOSPC
    error here instead of a SIGBUS when a page of the map is first written."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _copy_rows(arr: np.ndarray, paths: list[str], reuse: dict[str, tuple[Path, int]]) -> None:
    sources: dict[Path, np.ndarray] = {}
    for i, p in enumerate(paths):
        if p in reuse:
            src, row = reuse[p]
            if src not in sources:
                sources[src] = np.load(src, mmap_mode="r")
            arr[i] = sources[src][row]


_WORKER: dict = {}


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this worker when the process that started it dies."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _worker_init(root: str, cfg: dict, in_worker: bool = True) -> None:
    import torch

    from sp4sc.frontend.features import LogMel

    if in_worker:
        _die_with_parent()  # a killed build leaves no orphan workers behind
        torch.set_num_threads(1)  # one core per worker process: no OpenMP oversubscription
    _WORKER["root"] = Path(root)
    _WORKER["cfg"] = FrontEndConfig.from_dict(cfg)
    _WORKER["logmel"] = LogMel(_WORKER["cfg"])


def _worker_features(path: str) -> np.ndarray:
    """Decode one clip and compute its float16 log-mel ``(frames, mels)`` (in a worker process)."""
    import torch

    from sp4sc.frontend.audio import load_audio

    cfg = _WORKER["cfg"]
    x = load_audio(_WORKER["root"] / path, cfg.sample_rate, cfg.duration)
    with torch.inference_mode():
        return _WORKER["logmel"](torch.from_numpy(x)[None])[0].to(torch.float16).numpy()  # (frames, mels)


def _compute_chunks(
    root: Path, paths: list[str], chunks: list[list[int]], cfg: FrontEndConfig, workers: int | None, device: str | None
) -> Iterator[tuple[list[int], np.ndarray]]:
    """Yield ``(row indices, float16 features)`` per chunk, the next chunk already in flight.

    CPU: worker processes (one torch thread each) decode and compute one clip
    at a time. GPU: worker threads decode, the log-mel runs batched on the GPU.
    Each clip's features do not depend on which chunk or worker computed it.
    """
    import multiprocessing as mp

    import torch

    if not chunks:
        return
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cpus = cores()
    n_workers = cpus if workers is None else workers

    if dev.type == "cpu":
        if n_workers == 0:
            _worker_init(str(root), cfg.to_dict(), in_worker=False)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # one clip at a time gains little from threads, and they spin on a busy machine
            try:
                for chunk in chunks:
                    yield chunk, np.stack([_worker_features(paths[i]) for i in chunk])
            finally:
                torch.set_num_threads(threads)
            return
        methods = mp.get_all_start_methods()
        ctx = mp.get_context("fork" if "fork" in methods else "spawn")
        pool = ProcessPoolExecutor(n_workers, mp_context=ctx, initializer=_worker_init, initargs=(str(root), cfg.to_dict()))
        try:
            pending = [pool.submit(_worker_features, paths[i]) for i in chunks[0]]
            for c, chunk in enumerate(chunks):
                feats = [f.result() for f in pending]
                if c + 1 < len(chunks):
                    pending = [pool.submit(_worker_features, paths[i]) for i in chunks[c + 1]]
                yield chunk, np.stack(feats)  # (chunk, frames, mels)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return

    from sp4sc.frontend.audio import load_audio
    from sp4sc.frontend.features import LogMel

    logmel = LogMel(cfg).to(dev)
    threads = ThreadPoolExecutor(max(1, n_workers))

    def load(i: int) -> np.ndarray:
        return load_audio(root / paths[i], cfg.sample_rate, cfg.duration)

    try:
        pending_t = [threads.submit(load, i) for i in chunks[0]]
        for c, chunk in enumerate(chunks):
            waves = [f.result() for f in pending_t]
            if c + 1 < len(chunks):
                pending_t = [threads.submit(load, i) for i in chunks[c + 1]]
            x = torch.from_numpy(np.stack(waves)).to(dev)  # (chunk, samples)
            with torch.inference_mode():
                feats = logmel(x).to(torch.float16).cpu().numpy()  # (chunk, frames, mels)
            yield chunk, feats
    finally:
        threads.shutdown(wait=True, cancel_futures=True)


def open_cache(folder: str | os.PathLike) -> FeatureCache:
    """Open a complete cache folder (one holding ``manifest.json``)."""
    return FeatureCache(folder)
