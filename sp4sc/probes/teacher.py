"""Distillation teachers: a frozen encoder + a linear probe, its logits computed once per clip and cached.

The teacher of a training run is

    audio -> windows of δt -> frozen encoder -> mean window embedding -> linear probe -> logits

that is the ``mean-embedding`` system of the δt study (:mod:`sp4sc.probes.probe`),
with the probe trained on the training clips of the run's own split only
(``datamodule.clips("train")``: for an ESC-format dataset the other folds, for
TAU2020 fold1 train). Validation clips are never used to fit it: the epoch kept
is the one with the lowest loss on the training clips themselves (the sweep
selects on its evaluation split, which a teacher must not see).

By default (``cross_fit: 0``) its logits on the training clips are in-sample
predictions, as in Hinton et al. (2015) and EfficientAT's ``ex_audioset.py`` (a
teacher that has fitted the training set and still spreads probability over
similar classes). With ``cross_fit: k`` they are out-of-fold (cross-fitted): the
training clips are split into ``k`` inner folds (:func:`inner_folds`: whole groups
— ESC's official folds, which keep the takes of one recording together; TAU's
recording locations — never split), and a clip's target is the output of a probe
fitted on the other ``k - 1`` inner folds, so no target comes from a probe that saw
that clip with its label (:func:`cross_fit_logits`). Validation and test clips get
the probe fitted on all training clips (they are only reported). Each inner probe
is cached (``probe_inner<i>of<k>.pt`` + ``.json``) as the logits are, so a killed
run resumes without refitting what it had finished.

A fine-tuned network can be the teacher instead (``finetuned: DIR``, e.g. EfficientAT
mn04 fine-tuned with ``recipes/esc50_mn04_finetune.yaml``); its targets must be
out-of-fold too, so DIR is the ``sp4sc cv`` output of an *inner* cross-validation: for
the outer fold f, a dataset holding only the other folds (:func:`inner_cv_root`) and
one fit per remaining fold g, trained on the folds other than f and g. A training clip
of fold g gets the prediction of the fit validated on g (:class:`FinetunedModel`);
before any target is used, :func:`check_out_of_fold` proves from each checkpoint's data
settings that no model labels a clip it was trained on and that none was trained on a
clip of the outer validation fold. Validation clips get the mean of the inner models.

Classes are the datamodule's, in its order (a probe output ``j`` is
``datamodule.classes[j]``).

Cache (``<cache_dir>/teacher/<encoder>/<digest>/``, default ``$SP4SC_CACHE`` or
``~/.cache/sp4sc``): one ``(1, n_classes)`` logit row per clip, stored with the
audio file's size and modification time (:class:`~sp4sc.probes.cache.EmbeddingCache`),
plus the fitted probe (``probe.pt``, a plain state dict) and what it was fitted on
(``probe.json``). The digest covers the encoder name, its weights
(``sha256:<checkpoint hash>`` or ``random-init-seed<N>``), δt, hop, the probe
settings and seed, the class list and the training set (each training clip's
path, label, size and modification time): another checkpoint, probe or fold is
another folder. Window embeddings go through the embedding cache of the δt study
(``<cache_dir>/embeddings``), so a sweep at the same δt has already paid for them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from sp4sc.errors import Sp4scError
from sp4sc.probes.cache import EmbeddingKey
from sp4sc.probes.probe import ProbeConfig

FORMAT = 1
ARG = "--model.kd_teacher"
# kinds of the settings, for values that arrive as strings from the command line
_KINDS = {"encoder": "str", "ckpt": "opt_str", "random_init": "bool", "init_seed": "int", "dt": "float",
          "hop": "opt_float", "seed": "int", "device": "str", "batch_size": "int", "cache_dir": "opt_str",
          "cross_fit": "int", "finetuned": "opt_str"}
_PROBE_KINDS = {"hidden": "int", "epochs": "int", "batch_size": "int", "lr": "float", "weight_decay": "float"}
_EXPECTED = {"str": "a string (a name or a path)", "bool": "true or false", "int": "an integer", "float": "a number"}


def _coerce(name: str, value: Any, kind: str) -> Any:
    """``value`` as ``kind``; strings from the command line (``"2"``, ``"true"``, ``"null"``) are parsed."""
    if kind.startswith("opt_"):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none", "")):
            return None
        kind = kind[4:]
    try:
        if kind == "str":
            if not isinstance(value, (str, os.PathLike)):
                raise ValueError
            return str(value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "1", "yes"):
                return True
            if text in ("false", "0", "no"):
                return False
            raise ValueError
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if number != int(number):
                raise ValueError
            return int(number)
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    except (TypeError, ValueError):
        raise Sp4scError(f"{name} {value!r}: expected {_EXPECTED[kind]}") from None


@dataclass(frozen=True)
class TeacherConfig:
    """What the teacher is (the keys of ``--model.kd_teacher``).

    Attributes:
        encoder: registry name of the frozen encoder (``efficientat_mn04``, ``passt``, ``beats``...).
        ckpt: local checkpoint of the encoder (read with ``weights_only=True``, strict).
        random_init: random encoder weights instead (pipeline checks only, never a result).
        init_seed: seed of the random weights.
        dt: window length δt, s; the clip embedding is the mean over its windows.
        hop: hop between windows, s (None: hop = δt).
        probe: probe training settings (:class:`~sp4sc.probes.probe.ProbeConfig`).
        seed: seed of the probe's initial weights and batch order.
        device: where the encoder runs: ``auto`` (the GPU when there is one), ``cpu``, ``cuda[:n]``.
        batch_size: windows per encoder forward.
        cache_dir: top folder of the teacher and embedding caches (None: ``$SP4SC_CACHE`` or
            ``~/.cache/sp4sc``).
        cross_fit: 0 (in-sample targets, the probe fitted on every training clip) or ``k >= 2``:
            out-of-fold targets, each training clip's from a probe fitted on the other ``k - 1`` of
            ``k`` inner folds (see the module docstring). ESC-50: 4, the four training folds of
            an outer fold (the official folds keep a recording's takes together).
        finetuned: an ``sp4sc cv`` output folder of fine-tuned networks (an inner cross-validation
            over the training folds, see the module docstring) whose out-of-fold predictions are
            the targets, instead of the frozen encoder + probe. None: the probe.
    """

    encoder: str = "efficientat_mn04"
    ckpt: Optional[str] = None
    random_init: bool = False
    init_seed: int = 0
    dt: float = 3.0
    hop: Optional[float] = None
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    seed: int = 0
    device: str = "auto"
    batch_size: int = 32
    cache_dir: Optional[str] = None
    cross_fit: int = 0
    finetuned: Optional[str] = None

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "TeacherConfig":
        """Build from ``--model.kd_teacher``; unknown keys and bad values are one-line errors naming the key."""
        d = dict(d or {})
        if "online" in d:  # removed: an online teacher measured no gain (README, Experiment log, 2026-12-02)
            if _coerce(f"{ARG}.online", d.pop("online"), "bool"):
                raise Sp4scError(f"{ARG}.online: the online teacher was removed (it measured no gain); drop the key "
                                 "to distil from the cached targets")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise Sp4scError(f"{ARG}.{unknown[0]}: unknown key; known keys: {', '.join(sorted(known))}")
        kw: dict[str, Any] = {k: _coerce(f"{ARG}.{k}", v, _KINDS[k]) for k, v in d.items() if k != "probe"}
        probe = d.get("probe")
        if isinstance(probe, ProbeConfig):
            kw["probe"] = probe
        elif probe is not None:
            if not isinstance(probe, dict):
                raise Sp4scError(f"{ARG}.probe {probe!r}: expected a mapping such as {{epochs: 30, lr: 0.001}}")
            bad = sorted(set(probe) - set(_PROBE_KINDS))
            if bad:
                raise Sp4scError(f"{ARG}.probe.{bad[0]}: unknown key; known keys: {', '.join(_PROBE_KINDS)}")
            values = {k: _coerce(f"{ARG}.probe.{k}", v, _PROBE_KINDS[k]) for k, v in probe.items()}
            try:
                kw["probe"] = ProbeConfig(**values)
            except Sp4scError as exc:
                raise Sp4scError(f"{ARG}.probe: {exc}") from None
        return cls(**kw)

    def __post_init__(self) -> None:
        if self.dt <= 0:
            raise Sp4scError(f"{ARG}.dt {self.dt:g}: the window length must be positive (seconds)")
        if self.hop is not None and self.hop <= 0:
            raise Sp4scError(f"{ARG}.hop {self.hop:g}: must be positive (or null for hop = dt)")
        if self.batch_size < 1:
            raise Sp4scError(f"{ARG}.batch_size {self.batch_size}: must be at least 1")
        if self.ckpt is not None and self.random_init:
            raise Sp4scError(f"{ARG}.ckpt and {ARG}.random_init: give one of the two, not both")
        if self.cross_fit < 0 or self.cross_fit == 1:
            raise Sp4scError(f"{ARG}.cross_fit {self.cross_fit}: give the number of inner folds (>= 2; 4 for "
                             "ESC-50's four training folds), or 0 for in-sample targets")
        if self.finetuned is not None and self.cross_fit:
            raise Sp4scError(f"{ARG}.finetuned with {ARG}.cross_fit: a fine-tuned teacher's targets are out-of-fold "
                             "by its inner cross-validation; set cross_fit 0")

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (what the checkpoint's hyper-parameters hold)."""
        return asdict(self)

    def check_weights(self) -> None:
        """Refuse a teacher without weights, or with a checkpoint that is not a file (before any work)."""
        if self.finetuned is not None:
            if not Path(self.finetuned).expanduser().is_dir():
                raise Sp4scError(f"{ARG}.finetuned {self.finetuned}: no such folder; give the `sp4sc cv --out` "
                                 "folder of the teacher's inner cross-validation")
            return
        if self.ckpt is None and not self.random_init:
            raise Sp4scError(f"{ARG}.ckpt: give the teacher encoder's checkpoint (e.g. {ARG}.ckpt "
                             f"../shared/weights/efficientat/mn04_as_mAP_432.pt), or {ARG}.random_init true "
                             "for a pipeline check")
        if self.ckpt is not None and not Path(self.ckpt).expanduser().is_file():
            raise Sp4scError(f"{ARG}.ckpt {self.ckpt}: no such file; check the path (relative paths start "
                             "from the current folder)")

    def weights_identity(self) -> str:
        """``sha256:<checkpoint hash>`` or ``random-init-seed<N>`` (the encoder bundle's ``identity``)."""
        self.check_weights()
        from sp4sc.probes.bundle import file_sha256

        if self.finetuned is not None:
            rows = [[m.fold, file_sha256(m.checkpoint)] for m in finetuned_models(self.finetuned, with_index=False)]
            return "finetuned:" + hashlib.sha256(json.dumps(rows).encode()).hexdigest()
        if self.random_init:
            return f"random-init-seed{self.init_seed}"

        return f"sha256:{file_sha256(Path(self.ckpt).expanduser())}"


@dataclass(frozen=True)
class TeacherKey(EmbeddingKey):
    """What the cached teacher logits depend on, except each clip's own audio: the embedding key
    (:class:`~sp4sc.probes.cache.EmbeddingKey`: encoder, weights, δt, hop, sample rate) and

    Attributes:
        probe: probe settings and seed, as a canonical JSON string.
        classes: class names, as a JSON string (their order is the logits' order).
        train_set: SHA-256 of the training clips (path, label, size, modification time).
        format: version of this cache layout.
        cross_fit: inner folds of out-of-fold targets (0: in-sample); in the digest only when
            set, so the caches of in-sample teachers keep their folders.
    """

    probe: str
    classes: str
    train_set: str
    format: int = FORMAT
    cross_fit: int = 0

    def digest(self) -> str:
        """16 hex digits naming the cache folder."""
        d = asdict(self)
        if not d["cross_fit"]:
            del d["cross_fit"]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class TeacherOutput:
    """What :func:`compute_teacher` gives.

    Attributes:
        logits: stage -> float32 ``(n_clips, n_classes)``, rows in ``datamodule.clips(stage)`` order.
        accuracy: stage -> teacher accuracy (fraction) on the stage's labelled clips.
        fit_clips: paths of the clips the probe was fitted on (the training stage's).
        key: the cache key.
        folder: the cache folder (None without a cache).
        computed: clips whose logits were computed now (the others came from the cache).
    """

    logits: dict[str, torch.Tensor]
    accuracy: dict[str, float]
    fit_clips: list[str]
    key: TeacherKey
    folder: Optional[Path]
    computed: int = 0


def default_cache_dir() -> Path:
    """``$SP4SC_CACHE`` or ``~/.cache/sp4sc`` (``teacher/`` and ``embeddings/`` live inside)."""
    from sp4sc.data.toy import default_cache_root

    return default_cache_root()


def _train_set_digest(clips: Sequence, stamps: dict[str, dict[str, int]]) -> str:
    rows = [[c.path, int(c.label), stamps[c.path]["size"], stamps[c.path]["mtime_ns"]] for c in clips]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def teacher_key(cfg: TeacherConfig, classes: Sequence[str], train_clips: Sequence, root: Path,
                stamps: dict[str, dict[str, int]] | None = None) -> TeacherKey:
    """The cache key of a teacher for a training set (see the module docstring)."""
    from sp4sc.probes.cache import file_stamp
    from sp4sc.probes.encoders import create_encoder

    if stamps is None:
        stamps = {c.path: file_stamp(root / c.path) for c in train_clips}
    bundle = create_encoder(cfg.encoder)  # unbuilt: its name and rate
    probe = json.dumps({**asdict(cfg.probe), "seed": cfg.seed}, sort_keys=True)
    return TeacherKey(
        encoder=cfg.encoder, weights=cfg.weights_identity(), dt=float(cfg.dt),
        hop=float(cfg.dt if cfg.hop is None else cfg.hop), sample_rate=int(bundle.sample_rate), probe=probe,
        classes=json.dumps([str(c) for c in classes]), train_set=_train_set_digest(train_clips, stamps),
        cross_fit=int(cfg.cross_fit),
    )


def _resolve_device(name: str) -> torch.device:
    from sp4sc.probes.sweep import resolve_device

    try:
        return resolve_device(name)
    except Sp4scError:
        raise Sp4scError(f"{ARG}.device {name}: no CUDA GPU visible; use cpu or auto") from None


@dataclass
class _Teacher:
    """Builds what is needed, once: the encoder, the clip embeddings, the probe."""

    cfg: TeacherConfig
    root: Path
    n_classes: int
    folder: Optional[Path]
    cache_top: Optional[Path]
    bundle: Any = None
    probe: Any = None

    def encoder(self):
        if self.bundle is None:
            from sp4sc.probes.encoders import create_encoder, load_encoder
            from sp4sc.probes.sweep import check_dts

            cfg = self.cfg
            check_dts(create_encoder(cfg.encoder), [cfg.dt])
            self.bundle = load_encoder(cfg.encoder, ckpt=None if cfg.random_init else Path(cfg.ckpt).expanduser(),
                                       random_init=cfg.random_init, seed=cfg.init_seed,
                                       device=_resolve_device(cfg.device))
            if self.bundle.random_init:
                from sp4sc.log import logger
                from sp4sc.probes.sweep import RANDOM_INIT_NOTE

                logger.warning(f"distillation teacher {self.bundle.name}: {RANDOM_INIT_NOTE}")
        return self.bundle

    def window_embeddings(self, paths: list[str]) -> list[np.ndarray]:
        """The window embeddings of each clip, ``(n_windows, dim)`` each (the δt study's embedding cache)."""
        from sp4sc.probes.extract import embed_clips

        emb_cache = None if self.cache_top is None else self.cache_top / "embeddings"
        embs, _ = embed_clips(self.encoder(), self.root, paths, dt=self.cfg.dt, hop=self.cfg.hop,
                              cache_dir=emb_cache, batch_size=self.cfg.batch_size)
        return embs

    def clip_embeddings(self, paths: list[str]) -> np.ndarray:
        """Mean window embedding of each clip, float32 ``(n, dim)``."""
        return np.stack([np.asarray(e, dtype=np.float32).mean(axis=0) for e in self.window_embeddings(paths)])

    def fitted_probe(self, train_clips: Sequence):
        """The probe on every training clip: read from the cache folder, or fitted on ``train_clips`` (and stored)."""
        if self.probe is None:
            self.probe = self._probe("probe", train_clips)
        return self.probe

    def inner_probe(self, i: int, fit_clips: Sequence):
        """The probe of inner fold ``i`` of :attr:`TeacherConfig.cross_fit`: fitted on ``fit_clips`` (the
        training clips outside inner fold ``i``), cached as ``probe_inner<i>of<k>.pt``."""
        return self._probe(f"probe_inner{i}of{self.cfg.cross_fit}", fit_clips)

    def _probe(self, stem: str, fit_clips: Sequence):
        """A probe read from ``<folder>/<stem>.pt``, or fitted on ``fit_clips`` and stored there (with ``.json``)."""
        from sp4sc.probes.probe import make_probe_module

        path = None if self.folder is None else self.folder / f"{stem}.pt"
        if path is not None and path.is_file():
            from sp4sc.models.checkpoint import check_state_dict, read_checkpoint

            state = read_checkpoint(path)  # weights_only=True
            if not isinstance(state.get("mean"), torch.Tensor):
                raise Sp4scError(f"{path}: not a teacher probe (no 'mean'); delete the folder {self.folder}")
            dim = int(state["mean"].shape[0])
            module = make_probe_module(dim, self.n_classes, self.cfg.probe, np.zeros(dim), np.ones(dim))
            check_state_dict(module, state, f"{path} (delete the folder {self.folder} to refit)")
            return module.eval()
        paths = [c.path for c in fit_clips]
        x = self.clip_embeddings(paths)  # (n_fit, dim)
        y = np.array([c.label for c in fit_clips], dtype=np.int64)
        # selection on the fitting clips themselves: no validation clip is ever seen
        probe = train_probe(x, y, x, y, self.n_classes, self.cfg.probe, self.cfg.seed)
        if self.folder is not None:
            from sp4sc.fileio import atomic_path, write_json

            self.folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                torch.save({k: v.detach().cpu().clone() for k, v in probe.state_dict().items()}, tmp)
            with torch.inference_mode():
                train_acc = float((probe(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
            write_json(self.folder / f"{stem}.json", {
                "format": FORMAT, "config": {**self.cfg.to_dict(), "cache_dir": None}, "fit_clips": paths,
                "labels": y.tolist(), "train_accuracy": train_acc,
            })
        return probe

    def logits(self, paths: list[str], train_clips: Sequence) -> np.ndarray:
        """Teacher logits ``(n, n_classes)`` of clips.

        With ``cross_fit: k`` a training clip's row comes from the probe of its inner fold, fitted
        on the training clips of the other inner folds (:func:`cross_fit_logits`); every other clip's
        from the probe on all training clips.
        """
        if self.cfg.finetuned is not None:
            return finetuned_logits(finetuned_models(self.cfg.finetuned), self.root, paths, train_clips,
                                    self.n_classes, self.cfg.batch_size)
        x = self.clip_embeddings(paths)  # (n, dim)
        out = np.zeros((len(paths), self.n_classes), dtype=np.float32)
        row = {c.path: i for i, c in enumerate(train_clips)}
        rest = list(range(len(paths)))
        if self.cfg.cross_fit:
            fold_of = inner_folds(train_clips, self.cfg.cross_fit, self.cfg.seed)
            mine = [j for j, p in enumerate(paths) if p in row]
            rest = [j for j, p in enumerate(paths) if p not in row]
            if mine:
                inner = np.array([fold_of[row[paths[j]]] for j in mine])

                def probe_for(i: int):
                    return self.inner_probe(i, [c for c, f in zip(train_clips, fold_of) if f != i])

                out[mine] = cross_fit_logits(x[mine], inner, probe_for)
        if rest:
            probe = self.fitted_probe(train_clips)
            with torch.inference_mode():
                out[rest] = probe(torch.from_numpy(x[rest])).float().numpy()
        return out


def _group(clip: Any) -> str:
    """What must stay in one inner fold: ESC's official fold (a recording's takes share it), else TAU's
    recording location, else the clip itself."""
    if getattr(clip, "fold", None) is not None:
        return f"fold:{clip.fold}"
    if getattr(clip, "location", None):
        return f"location:{clip.location}"
    return f"clip:{clip.path}"


def inner_folds(clips: Sequence, k: int, seed: int = 0) -> list[int]:
    """Inner fold (0 .. k-1) of each training clip, for out-of-fold teacher targets.

    Clips of one group (:func:`_group`: ESC fold, TAU location, else the clip) share a fold. Groups
    are taken in an order fixed by a hash of (seed, group) and each goes to the fold holding the
    fewest clips so far (ties: the lowest index): balanced, deterministic, independent of the
    clips' order. With ESC-50's four training folds and ``k = 4`` each inner fold is one official fold.

    Raises:
        Sp4scError: fewer groups than ``k``.
    """
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(clips):
        groups.setdefault(_group(c), []).append(i)
    if len(groups) < k:
        kinds = sorted({g.split(":")[0] for g in groups})
        raise Sp4scError(f"{ARG}.cross_fit {k}: the {len(clips)} training clips form only {len(groups)} groups "
                         f"({'/'.join(kinds)}; a group is never split, so no near-copy of a clip fits its target's "
                         f"probe); use {ARG}.cross_fit {len(groups)} or less")
    order = sorted(groups, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    sizes = [0] * k
    fold = [0] * len(clips)
    for g in order:
        i = min(range(k), key=lambda j: (sizes[j], j))
        for c in groups[g]:
            fold[c] = i
        sizes[i] += len(groups[g])
    return fold


def cross_fit_logits(x: np.ndarray, inner: np.ndarray, probe_for: Any) -> np.ndarray:
    """Out-of-fold logits: row ``j`` is ``probe_for(inner[j])(x[j])``.

    Args:
        x: float32 ``(n, dim)`` clip embeddings.
        inner: ``(n,)`` inner fold of each clip.
        probe_for: ``i -> probe`` fitted on the clips outside inner fold ``i`` (none of the rows it labels).

    Returns:
        float32 ``(n, n_classes)``.
    """
    out = None
    for i in sorted(set(int(v) for v in inner)):
        rows = np.nonzero(inner == i)[0]
        probe = probe_for(i)  # fitted (with gradients) or read, outside inference mode
        with torch.inference_mode():
            part = probe(torch.from_numpy(np.ascontiguousarray(x[rows]))).float().numpy()
        if out is None:
            out = np.zeros((len(x), part.shape[1]), dtype=np.float32)
        out[rows] = part
    return out


def train_probe(*args, **kwargs):
    """:func:`sp4sc.probes.probe.train_probe` (a module-level name, so tests can watch what it is fed)."""
    from sp4sc.probes.probe import train_probe as fit

    return fit(*args, **kwargs)


def compute_teacher(datamodule: Any, cfg: TeacherConfig, stages: Sequence[str] = ("train",),
                    use_cache: bool = True) -> TeacherOutput:
    """Teacher logits of every clip of the given stages, from the cache or computed (and cached).

    Args:
        datamodule: a :class:`~sp4sc.data.datamodule.SceneDataModule` (or anything with
            ``clips(stage)``, ``classes`` and ``index().root``).
        cfg: the teacher.
        stages: stages whose clips get logits (``"train"`` is what distillation needs).
        use_cache: read and write the teacher and embedding caches.

    Returns:
        the logits per stage (rows in ``datamodule.clips(stage)`` order) and what they came from.

    The random streams of the caller (torch's CPU generator, numpy's and Python's global ones) are
    left as they were: a fit that computes its teacher first starts from the same weights and
    draws the same batches as one that does not.
    """
    with _random_streams_kept():
        return _compute_teacher(datamodule, cfg, stages, use_cache)


@contextlib.contextmanager
def _random_streams_kept():
    """Restore torch's CPU generator and numpy's and Python's global ones on exit (probe fitting draws from them)."""
    import random

    torch_state, np_state, py_state = torch.random.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.random.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)


def _cache_place(cfg: TeacherConfig, key: TeacherKey, use_cache: bool) -> tuple[Optional[Path], Optional[Path]]:
    """``(top, folder)``: the cache's top folder and this teacher's folder in it (both None without a cache)."""
    if not use_cache:
        return None, None
    top = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    return top, top / "teacher" / key.encoder / key.digest()


def _compute_teacher(datamodule: Any, cfg: TeacherConfig, stages: Sequence[str], use_cache: bool) -> TeacherOutput:
    from sp4sc.probes.cache import EmbeddingCache, file_stamp

    cfg.check_weights()
    classes = [str(c) for c in datamodule.classes]
    root = Path(datamodule.index().root)
    train = list(datamodule.clips("train"))
    if not train:
        raise Sp4scError(f"{ARG}: the training split of {root} is empty; the teacher's probe needs labelled clips")
    unlabelled = [c.path for c in train if c.label is None]
    if unlabelled:
        raise Sp4scError(f"{ARG}: {len(unlabelled)} training clips without a label (e.g. {unlabelled[0]}); "
                         "the teacher's probe needs labelled clips")
    per_stage = {s: list(datamodule.clips(s)) for s in dict.fromkeys(("train", *stages))}
    if cfg.finetuned is not None:
        evaluation = [c for s in ("val", "test") for c in datamodule.clips(s)]
        check_out_of_fold(finetuned_models(cfg.finetuned), train, evaluation, classes)
    needed: dict[str, Any] = {}
    for clips in per_stage.values():
        for c in clips:
            needed.setdefault(c.path, c)
    stamps = {p: file_stamp(root / p) for p in needed}
    key = teacher_key(cfg, classes, train, root, stamps)
    top, folder = _cache_place(cfg, key, use_cache)
    cache = None if folder is None else EmbeddingCache(top / "teacher", key, len(classes))
    missing = [p for p in needed if cache is None or not cache.valid(p, stamps[p])]
    rows: dict[str, np.ndarray] = {}
    if missing:
        from sp4sc.log import logger

        logger.info(f"distillation teacher: {cfg.encoder} + probe at dt={cfg.dt:g} s, logits of {len(missing)} clips"
                    + (f" (cache {folder})" if folder is not None else ""))
        teacher = _Teacher(cfg, root, len(classes), folder, top)
        new = teacher.logits(missing, train)  # (n_missing, n_classes)
        if cache is not None:
            cache.add([(p, stamps[p], new[i : i + 1]) for i, p in enumerate(missing)])
        rows = {p: new[i] for i, p in enumerate(missing)}
    logits: dict[str, torch.Tensor] = {}
    accuracy: dict[str, float] = {}
    for stage in stages:
        clips = per_stage[stage]
        arr = np.stack([rows[c.path] if c.path in rows else np.asarray(cache.get(c.path))[0] for c in clips]) \
            if clips else np.zeros((0, len(classes)), dtype=np.float32)
        logits[stage] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        labelled = [(i, c.label) for i, c in enumerate(clips) if c.label is not None]
        if labelled:
            idx, lab = zip(*labelled)
            accuracy[stage] = float((arr[list(idx)].argmax(axis=1) == np.array(lab)).mean())
    return TeacherOutput(logits=logits, accuracy=accuracy, fit_clips=[c.path for c in train], key=key,
                         folder=folder, computed=len(missing))


@dataclass
class FinetunedModel:
    """One fit of a fine-tuned teacher's inner cross-validation.

    Attributes:
        fold: its validation fold: the clips whose targets it gives.
        checkpoint: its checkpoint (``result.json``'s ``checkpoint``).
        trained_on: paths (relative to the dataset root) of the clips it was trained on, from its
            checkpoint's data settings (dataset root and validation fold); empty with ``with_index=False``.
    """

    fold: int
    checkpoint: Path
    trained_on: frozenset = frozenset()


def finetuned_models(folder: str | os.PathLike, with_index: bool = True) -> list[FinetunedModel]:
    """The fits of an ``sp4sc cv`` output folder (``fold<k>/result.json``), in fold order.

    Each checkpoint is read with ``weights_only=True``; its ``datamodule_hyper_parameters``
    (written by LightningCLI) name the dataset root and validation fold it was fitted with,
    from which the clips it was trained on are listed (ESC-format data: every fold but its own).
    """
    from sp4sc.cvfolder import CHECKPOINTS, RESULT, fold_dir, fold_results
    from sp4sc.models.checkpoint import read_checkpoint

    top = Path(folder).expanduser()
    try:
        results = fold_results(top)
    except Sp4scError as exc:
        raise Sp4scError(f"{ARG}.finetuned (the teacher's inner cross-validation): {exc}") from None
    models = []
    for fold, res in sorted(results.items()):
        here = fold_dir(top, fold)
        ckpt = Path(str(res.get("checkpoint", "")))
        if not ckpt.is_file() and (here / CHECKPOINTS / ckpt.name).is_file():
            ckpt = here / CHECKPOINTS / ckpt.name  # a relative path written from another working folder
        if not ckpt.is_file():
            raise Sp4scError(f"{here / RESULT}: its checkpoint {ckpt} is missing; rerun that fold of the inner "
                             "cross-validation")
        trained: frozenset = frozenset()
        if with_index:
            hp = read_checkpoint(ckpt).get("datamodule_hyper_parameters") or {}
            if hp.get("dataset") != "esc" or not hp.get("root") or int(hp.get("fold", -1)) != fold:
                raise Sp4scError(f"{ckpt}: its data settings (dataset {hp.get('dataset')!r}, fold {hp.get('fold')!r}) do "
                                 f"not say which ESC clips it was trained on; a fine-tuned teacher must come from "
                                 "`sp4sc cv` on an ESC-format dataset")
            from sp4sc.data.index import load_index

            index = load_index("esc", hp["root"], check_audio=False)
            trained = frozenset(c.path for name, clips in index.splits.items() if name != f"fold{fold}" for c in clips)
        models.append(FinetunedModel(fold, ckpt, trained))
    return models


def check_out_of_fold(models: Sequence[FinetunedModel], train: Sequence, evaluation: Sequence,
                      classes: Sequence[str]) -> None:
    """Refuse fine-tuned targets that would not be out-of-fold (one-line errors naming the clip and the fit).

    Every training clip needs the fit validated on its fold, and that fit must not have been
    trained on it; no fit may have been trained on a validation or test clip of the run.
    """
    by_fold = {m.fold: m for m in models}
    for c in train:
        m = by_fold.get(c.fold)
        if m is None:
            raise Sp4scError(f"{ARG}.finetuned: no inner fit validated on fold {c.fold} (training clip {c.path}); run "
                             f"the inner cross-validation with --folds {' '.join(map(str, sorted({t.fold for t in train})))}")
        if c.path in m.trained_on:
            raise Sp4scError(f"{ARG}.finetuned: {m.checkpoint} was trained on {c.path}, so its target for that clip "
                             "would not be out-of-fold; build the inner dataset with inner_cv_root")
    for m in models:
        seen = sorted({c.path for c in evaluation if c.path in m.trained_on})
        if seen:
            raise Sp4scError(f"{ARG}.finetuned: {m.checkpoint} was trained on {len(seen)} clips of this run's "
                             f"validation fold (e.g. {seen[0]}); its inner dataset must leave the outer fold out "
                             "(inner_cv_root)")
    from sp4sc.models.checkpoint import read_checkpoint

    for m in models:
        theirs = list((read_checkpoint(m.checkpoint).get("sp4sc") or {}).get("classes") or [])
        if theirs != [str(c) for c in classes]:
            raise Sp4scError(f"{ARG}.finetuned: {m.checkpoint} predicts other classes than this run's "
                             f"({len(theirs)} vs {len(classes)}); fine-tune it on the same dataset")


def finetuned_logits(models: Sequence[FinetunedModel], root: Path, paths: list[str], train: Sequence,
                     n_classes: int, batch_size: int = 32) -> np.ndarray:
    """Logits ``(n, n_classes)``: a training clip's from the fit validated on its fold, any other clip's the
    mean over the fits. Each fit runs on its own front end's log-mels (float32) in eval mode."""
    from sp4sc.frontend.audio import load_audio
    from sp4sc.frontend.features import LogMel
    from sp4sc.models.checkpoint import load_model

    fold_of = {c.path: c.fold for c in train}
    out = np.zeros((len(paths), n_classes), dtype=np.float32)
    count = np.zeros(len(paths), dtype=np.float32)
    for m in models:
        rows = [j for j, p in enumerate(paths) if fold_of.get(p, m.fold) == m.fold]
        if not rows:
            continue
        loaded = load_model(m.checkpoint)
        fe = loaded.frontend
        logmel = LogMel(fe).eval()
        for i in range(0, len(rows), batch_size):
            part = rows[i : i + batch_size]
            wav = torch.from_numpy(np.stack([load_audio(root / paths[j], fe.sample_rate, fe.duration) for j in part]))
            with torch.inference_mode():
                logits = loaded.model(logmel(wav).unsqueeze(1)).float().numpy()  # (batch, n_classes)
            out[part] += logits
            count[part] += 1
    return out / np.maximum(count, 1)[:, None]


def inner_cv_root(root: str | os.PathLike, outer_fold: int, dest: str | os.PathLike) -> Path:
    """An ESC-format dataset at ``dest`` holding every fold of ``root`` but ``outer_fold`` (for a fine-tuned
    teacher's inner cross-validation): ``meta/<csv>`` without that fold's rows (written atomically) and
    ``audio`` a link to ``root``'s audio folder. Returns ``dest``.
    """
    import csv as _csv

    from sp4sc.data.index import _esc_csv
    from sp4sc.fileio import atomic_path

    src = Path(root).expanduser().resolve()
    out = Path(dest).expanduser()
    meta = _esc_csv(src)
    with open(meta, newline="") as fh:
        rows = list(_csv.DictReader(fh))
    if not any(int(r["fold"]) == int(outer_fold) for r in rows):
        raise Sp4scError(f"{meta}: no clip in fold {outer_fold}; give one of the dataset's folds")
    keep = [r for r in rows if int(r["fold"]) != int(outer_fold)]
    (out / "meta").mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "meta" / meta.name) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = _csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
            w.writeheader()
            w.writerows(keep)
    link = out / "audio"
    if not link.exists():
        link.symlink_to(src / "audio", target_is_directory=True)
    return out


def teacher_logits(datamodule: Any, config: TeacherConfig | dict | None = None, *,
                   stages: Sequence[str] = ("train", "val"), **settings: Any) -> dict[str, torch.Tensor]:
    """Teacher logits per stage, float32 ``(n_clips, n_classes)`` in ``datamodule.clips(stage)`` order.

    Args:
        datamodule: the run's :class:`~sp4sc.data.datamodule.SceneDataModule`.
        config: a :class:`TeacherConfig` or its dict; or give its keys as keyword arguments
            (``encoder="efficientat_mn04", ckpt=PATH, dt=1.0``).
        stages: the stages to return.
    """
    if isinstance(config, TeacherConfig):
        if settings:
            raise Sp4scError("teacher_logits: give a TeacherConfig or keyword settings, not both")
        cfg = config
    else:
        cfg = TeacherConfig.from_dict({**(config or {}), **settings})
    return compute_teacher(datamodule, cfg, stages).logits


__all__ = ["TeacherConfig", "TeacherKey", "TeacherOutput", "compute_teacher", "FinetunedModel", "check_out_of_fold",
           "cross_fit_logits", "finetuned_logits", "finetuned_models", "inner_cv_root", "inner_folds", "teacher_logits",
           "teacher_key"]
