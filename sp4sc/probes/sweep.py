"""The δt study: embed at each temporal support, probe, aggregate, measure cost, compare.

:func:`run_sweep` returns a JSON-ready dict (the schema of issue 6 plus extra
fields); :func:`write_outputs` writes ``results.json``, ``table.md`` and
``plot.png`` atomically into the output folder.

Splits: TAU2020 trains on fold1 ``train`` and selects/reports on fold1
``evaluate`` (the toy dataset has the same layout); ESC-format data runs
k-fold cross-validation over its folds and averages the folds. Each probe
seed gives one figure (fold-averaged for ESC); rows report the mean and the
sample standard deviation (ddof = 1) over seeds.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from sp4sc.errors import Sp4scError
from sp4sc.log import logger
from sp4sc.probes.encoders import EncoderBundle, create_encoder, load_encoder
from sp4sc.probes.probe import AGGREGATIONS, ProbeConfig, fit_and_score, n_probe_parameters, probe_macs

DEFAULT_DTS = (1.0, 2.0, 3.0, 5.0, 10.0)
DATASETS = ("tau2020", "esc", "toy")
RANDOM_INIT_NOTE = "RANDOM-INIT encoder weights: pipeline/cost check only, not a result"


@dataclass
class SweepConfig:
    """Settings of one sweep (the command-line options).

    Attributes:
        encoder: registry name of the encoder.
        dataset: "tau2020", "esc" or "toy".
        root: dataset root (optional for "toy").
        dts: window lengths, s.
        hop: hop between windows, s (None: hop = δt).
        ckpt: encoder checkpoint (exclusive with ``random_init``).
        random_init: random encoder weights (seeded by ``init_seed``).
        init_seed: seed of the random encoder weights.
        seeds: number of probe seeds (0, 1, ...).
        compare: sp4sc model files / Lightning checkpoints to compare with.
        out: output folder.
        cache_dir: embedding cache folder (None: no cache).
        max_clips: at most this many clips per split (TAU: train and evaluate each; ESC: in
            all, the same number per fold); class-balanced, deterministic.
        device: "auto", "cpu" or "cuda[:n]".
        batch_size: windows per encoder forward.
        workers: audio-loading worker processes.
        cost_windows: windows timed for the raw-forward cost per δt.
        aggregations: aggregations to report.
        probe: probe training settings.
    """

    encoder: str
    dataset: str
    root: str | None = None
    dts: tuple[float, ...] = DEFAULT_DTS
    hop: float | None = None
    ckpt: str | None = None
    random_init: bool = False
    init_seed: int = 0
    seeds: int = 3
    compare: tuple[str, ...] = ()
    out: str = "probe_results"
    cache_dir: str | None = None
    max_clips: int | None = None
    device: str = "auto"
    batch_size: int = 32
    workers: int = 0
    cost_windows: int = 8
    aggregations: tuple[str, ...] = AGGREGATIONS
    probe: ProbeConfig = field(default_factory=ProbeConfig)

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise Sp4scError(f"--dataset {self.dataset!r}: choose one of {', '.join(DATASETS)}")
        if self.dataset != "toy" and not self.root:
            raise Sp4scError(f"--root: required for --dataset {self.dataset}")
        if not self.dts:
            raise Sp4scError("--dt: give at least one window length")
        if any(d <= 0 for d in self.dts):
            raise Sp4scError(f"--dt {list(self.dts)}: window lengths must be positive")
        if len(set(self.dts)) != len(self.dts):
            raise Sp4scError(f"--dt {list(self.dts)}: repeated values")
        if self.hop is not None and self.hop <= 0:
            raise Sp4scError(f"--hop {self.hop:g}: must be positive")
        if self.seeds < 1:
            raise Sp4scError(f"--seeds {self.seeds}: need at least 1 (3 or more to report a spread)")
        if self.max_clips is not None and self.max_clips < 1:
            raise Sp4scError(f"--max-clips {self.max_clips}: must be positive")
        if self.cost_windows < 1:
            raise Sp4scError(f"--cost-windows {self.cost_windows}: must be positive")
        for a in self.aggregations:
            if a not in AGGREGATIONS:
                raise Sp4scError(f"--aggregation {a!r}: choose from {', '.join(AGGREGATIONS)}")
        if (self.ckpt is None) == (not self.random_init):
            raise Sp4scError("encoder weights: give exactly one of --ckpt PATH or --random-init")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; a cuda request without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise Sp4scError(f"--device {name}: no CUDA GPU visible; use --device cpu")
    return dev


# ----------------------------------------------------------------------------- data
@dataclass
class StudyData:
    """Clips of the study: folds of (train, eval) clip lists, class names, root."""

    name: str
    root: Path
    classes: tuple[str, ...]
    folds: list[tuple[list, list]]
    split_names: tuple[str, str]

    def names(self) -> list[str]:
        seen: dict[str, None] = {}
        for tr, ev in self.folds:
            for c in (*tr, *ev):
                seen.setdefault(c.path, None)
        return list(seen)


def _balanced(clips: list, n: int | None) -> list:
    """At most ``n`` clips, class-balanced round robin in file order (deterministic)."""
    if n is None or len(clips) <= n:
        return list(clips)
    by_label: dict = {}
    for c in clips:
        by_label.setdefault(c.label, []).append(c)
    queues = [by_label[k] for k in sorted(by_label, key=lambda x: (x is None, x))]
    out = []
    i = 0
    while len(out) < n:
        for q in queues:
            if i < len(q) and len(out) < n:
                out.append(q[i])
        i += 1
    keep = {c.path for c in out}
    return [c for c in clips if c.path in keep]


def _check_labelled(clips: list, where: str) -> None:
    bad = [c.path for c in clips if c.label is None]
    if bad:
        raise Sp4scError(f"{where}: {len(bad)} clips without a label (e.g. {bad[0]}); the probe needs labelled clips")


def load_study_data(dataset: str, root: str | None, max_clips: int | None = None) -> StudyData:
    """Index a dataset and cut it into probe folds (see the module docstring)."""
    from sp4sc.data.index import load_index

    if dataset == "toy":
        from sp4sc.data.toy import ensure_toy_dataset

        path = Path(root).expanduser() if root else None
        if path is not None and (path / "meta.csv").exists():
            data_root = path  # an existing toy (or TAU-layout) folder, whatever its generator settings
        else:
            data_root = ensure_toy_dataset(path)
        index = load_index("tau2020", data_root)
    else:
        index = load_index(dataset, root)
    if dataset in ("tau2020", "toy"):
        train = _balanced(index.split("train"), max_clips)
        ev = _balanced(index.split("evaluate"), max_clips)
        _check_labelled(train + ev, f"{index.root}")
        if not train or not ev:
            raise Sp4scError(f"{index.root}: fold1 train/evaluate splits are empty")
        return StudyData(dataset, Path(index.root), tuple(index.classes), [(train, ev)], ("fold1 train", "fold1 evaluate"))
    clips = index.all_clips()
    if max_clips is not None:  # the same number from each fold, class-balanced within the fold
        per_fold = max(1, max_clips // max(1, len(index.folds)))
        clips = [c for k in index.folds for c in _balanced([c for c in clips if c.fold == k], per_fold)]
    _check_labelled(clips, f"{index.root}")
    keep = {c.path for c in clips}
    folds = []
    for k in index.folds:
        tr, ev = index.cv_split(k)
        tr = [c for c in tr if c.path in keep]
        ev = [c for c in ev if c.path in keep]
        if tr and ev:
            folds.append((tr, ev))
    if len(folds) < 2:
        raise Sp4scError(f"{index.root}: cross-validation needs at least 2 non-empty folds (raise --max-clips?)")
    return StudyData(dataset, Path(index.root), tuple(index.classes), folds, ("other folds", "held-out fold"))


# ----------------------------------------------------------------------------- study
def _hms(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class FitProgress:
    """One log line per (δt, fold) while the probes are fitted, with elapsed time and ETA.

    The lines go through the package logger (stderr), so a terminal and a piped log see the
    same thing (the style of :mod:`sp4sc.training.progress`)::

        INFO: probes dt=1 s: fold 2/5 done (3 seeds, 2 aggregations; 1,600 train / 400 eval clips) in 0:00:12, elapsed 0:00:25, eta 0:00:37

    Args:
        dt: the window length of these probes.
        folds: how many folds are fitted.
        seeds: probes per fold.
        aggregations: how many aggregations each seed scores.
        clock: the time source (tests).
    """

    def __init__(self, dt: float, folds: int, seeds: int, aggregations: int, clock=None):
        import time

        self.dt, self.folds, self.seeds, self.aggregations = dt, folds, seeds, aggregations
        self.clock = clock or time.perf_counter
        self.t0 = self.last = self.clock()

    def start(self) -> None:
        """Say what is about to be fitted (the first fold's line may take a while)."""
        logger.info(f"probes dt={self.dt:g} s: fitting {self.folds} fold{'s' if self.folds != 1 else ''} x "
                    f"{self.seeds} seed{'s' if self.seeds != 1 else ''}")
        self.t0 = self.last = self.clock()

    def line(self, k: int, n_train: int, n_eval: int) -> str:
        """The line for fold index ``k`` (0-based) just finished."""
        now = self.clock()
        elapsed, this = now - self.t0, now - self.last
        self.last = now
        eta = elapsed / (k + 1) * (self.folds - k - 1)
        seeds = f"{self.seeds} seed{'s' if self.seeds != 1 else ''}"
        aggs = f"{self.aggregations} aggregation{'s' if self.aggregations != 1 else ''}"
        return (f"probes dt={self.dt:g} s: fold {k + 1}/{self.folds} done ({seeds}, {aggs}; {n_train:,} train / "
                f"{n_eval:,} eval clips) in {_hms(this)}, elapsed {_hms(elapsed)}, eta {_hms(eta)}")

    def fold_done(self, k: int, n_train: int, n_eval: int) -> None:
        logger.info(self.line(k, n_train, n_eval))


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    if any(v is None for v in values):
        return None, None
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return float(arr.mean()), std


def check_dts(bundle: EncoderBundle, dts) -> None:
    """Refuse window lengths the encoder cannot take (before anything is built or read)."""
    for dt in dts:
        if bundle.max_window_s is not None and dt > bundle.max_window_s + 1e-9:
            raise Sp4scError(f"--dt {dt:g}: {bundle.name} accepts windows up to {bundle.max_window_s:g} s")
        if dt < bundle.min_window_s:
            raise Sp4scError(f"--dt {dt:g}: {bundle.name} needs windows of at least {bundle.min_window_s:g} s")


def run_sweep(cfg: SweepConfig, bundle: EncoderBundle | None = None) -> dict:
    """Run the whole study; returns the results dict (see :func:`write_outputs`).

    Args:
        cfg: the settings.
        bundle: an encoder already built (tests); by default built from ``cfg``.
    """
    from sp4sc.machine import line as machine_line
    from sp4sc.probes.cost import raw_throughput
    from sp4sc.probes.extract import embed_clips

    device = resolve_device(cfg.device)
    check_dts(bundle if bundle is not None else create_encoder(cfg.encoder), cfg.dts)
    data = load_study_data(cfg.dataset, cfg.root, cfg.max_clips)
    if bundle is None:
        bundle = load_encoder(cfg.encoder, ckpt=cfg.ckpt, random_init=cfg.random_init, seed=cfg.init_seed, device=device)
    else:
        bundle.to(device)
    names = data.names()
    n_classes = len(data.classes)
    if bundle.random_init:
        logger.warning(f"{bundle.name}: {RANDOM_INIT_NOTE}")
    logger.info(
        f"probe sweep: {bundle.name} ({bundle.identity[:23]}) on {data.name} at {data.root}, {len(names)} clips, "
        f"{len(data.folds)} fold{'s' if len(data.folds) != 1 else ''}, dt {list(cfg.dts)} s, "
        f"{cfg.seeds} seed{'s' if cfg.seeds != 1 else ''}, device {device}"
    )
    rows, cost = [], []
    eval_windows: dict[float, float] = {}
    for dt in cfg.dts:
        embs, st = embed_clips(
            bundle, data.root, names, dt=dt, hop=cfg.hop, cache_dir=cfg.cache_dir,
            batch_size=cfg.batch_size, workers=cfg.workers,
        )
        emb = dict(zip(names, embs))
        ev_counts = [len(emb[c.path]) for _, ev in data.folds for c in ev]
        eval_windows[dt] = float(np.mean(ev_counts))
        per_seed: dict[str, list[dict]] = {a: [] for a in cfg.aggregations}
        # fold by fold (every seed of a fold, then the next fold), one progress line per (dt, fold);
        # each probe's randomness comes from its own seed, so the order changes no number
        by_seed: list[list[dict]] = [[] for _ in range(cfg.seeds)]
        progress = FitProgress(dt, len(data.folds), cfg.seeds, len(cfg.aggregations))
        progress.start()
        for k, (tr, ev) in enumerate(data.folds):
            for seed in range(cfg.seeds):
                by_seed[seed].append(fit_and_score(
                    [emb[c.path] for c in tr], np.array([c.label for c in tr]),
                    [emb[c.path] for c in ev], np.array([c.label for c in ev]),
                    n_classes, cfg.probe, seed, tuple(cfg.aggregations),
                ))
            progress.fold_done(k, len(tr), len(ev))
        for seed, fold_scores in enumerate(by_seed):
            for a in cfg.aggregations:
                acc = float(np.mean([f[a]["accuracy"] for f in fold_scores]))
                micro = float(np.mean([f[a]["micro_accuracy"] for f in fold_scores]))
                lls = [f[a]["logloss"] for f in fold_scores]
                ll = None if any(v is None for v in lls) else float(np.mean(lls))
                per_seed[a].append({"seed": seed, "accuracy": acc, "micro_accuracy": micro, "logloss": ll})
        for a in cfg.aggregations:
            acc, acc_std = _mean_std([s["accuracy"] for s in per_seed[a]])
            ll, ll_std = _mean_std([s["logloss"] for s in per_seed[a]])
            micro, _ = _mean_std([s["micro_accuracy"] for s in per_seed[a]])
            rows.append({
                "dt": dt, "aggregation": a, "accuracy": acc, "logloss": ll, "std": acc_std,
                "logloss_std": ll_std, "micro_accuracy": micro, "seeds": len(per_seed[a]),
                "windows_per_eval_clip": eval_windows[dt], "per_seed": per_seed[a],
            })
            logger.info(f"dt={dt:g} s {a:<16} accuracy {100 * acc:.1f} +/- {100 * acc_std:.1f} %"
                        + (f", log loss {ll:.3f}" if ll is not None else ""))
        batch = max(1, min(cfg.batch_size, cfg.cost_windows))
        thr = raw_throughput(bundle, dt, batch_size=batch, batches=max(1, cfg.cost_windows // batch), warmup=1)
        gflops = thr.flops_per_window / 1e9  # counted on the warm-up batch
        extract = st.to_dict()
        cost.append({
            "dt": dt,
            "windows_per_s": thr.windows_per_s,
            "peak_mib": thr.peak_mib,
            "gflops_per_window": gflops,
            "encoder_s_per_audio_hour": thr.encoder_s_per_audio_hour,
            "memory_kind": thr.memory_kind,
            "batch_size": thr.batch_size,
            "windows_timed": thr.windows,
            "extract": extract,
            "extract_encoder_s_per_audio_hour": (
                3600.0 * extract["encoder_s"] / extract["audio_s"] if extract["audio_s"] > 0 else None
            ),
        })
    compare = [_probe_compare_row(bundle, r, cost, n_classes, cfg.probe.hidden) for r in rows if r["aggregation"] == cfg.aggregations[0]]
    for path in cfg.compare:
        is_cv = Path(path).is_dir() and (Path(path) / "cv.json").is_file()
        compare.append(compare_cv(path, data) if is_cv else compare_checkpoint(path, data))
    result = {
        "encoder": bundle.name,
        "random_init": bool(bundle.random_init),
        "weights": bundle.identity,
        "checkpoint": bundle.checkpoint,
        "dataset": data.name,
        "root": str(data.root),
        "classes": list(data.classes),
        "splits": {"train": data.split_names[0], "eval": data.split_names[1], "folds": len(data.folds)},
        "clips": {"train": sum(len(tr) for tr, _ in data.folds), "eval": sum(len(ev) for _, ev in data.folds)},
        "hop": cfg.hop,
        "seeds": cfg.seeds,
        "probe": asdict(cfg.probe),
        "encoder_params": bundle.n_parameters(),
        "device": str(device),
        "machine": machine_line(),
        "units": {
            "dt": "s", "accuracy": "fraction, class-averaged (DCASE)", "std": "sample std of accuracy over seeds",
            "logloss": "nats, clip mean (null for majority-vote)", "peak_mib": "MiB", "gflops_per_window":
            "FlopCounterMode, 2 per MAC, matmul/conv only", "encoder_s_per_audio_hour": "s per hour of audio (hop = dt)",
        },
        "rows": rows,
        "cost": cost,
        "compare": compare,
    }
    if bundle.random_init:
        result["note"] = RANDOM_INIT_NOTE
    return result


def _probe_compare_row(bundle: EncoderBundle, row: dict, cost: list[dict], n_classes: int, hidden: int) -> dict:
    c = next(c for c in cost if c["dt"] == row["dt"])
    macs_window = c["gflops_per_window"] * 1e9 / 2
    n_win = row["windows_per_eval_clip"]
    label = f"{bundle.name} + probe, dt={row['dt']:g} s, {row['aggregation']}"
    if bundle.random_init:
        label += " [random-init]"
    return {
        "name": label,
        "kind": "probe",
        "dt": row["dt"],
        "accuracy": row["accuracy"],
        "logloss": row["logloss"],
        "params": bundle.n_parameters() + n_probe_parameters(bundle.dim, n_classes, hidden),
        "macs_per_clip": macs_window * n_win + probe_macs(bundle.dim, n_classes, hidden) * (1 if row["aggregation"] == "mean-embedding" else n_win),
        "macs_counter": "FlopCounterMode/2 (matmul+conv) x windows per clip",
    }


def _folded_size(loaded) -> tuple[int, float]:
    """Parameters and thop MACs of one clip at the front end's length, on the BatchNorm-folded model."""
    import thop

    from sp4sc.models.fold import fold_batchnorm

    fe = loaded.frontend
    folded = fold_batchnorm(loaded.model)
    params = sum(t.numel() for t in folded.parameters())
    macs, _ = thop.profile(copy.deepcopy(folded), inputs=(torch.zeros(1, 1, fe.n_frames, fe.n_mels),), verbose=False)
    return int(params), float(macs)


def compare_checkpoint(path: str | os.PathLike, data: StudyData) -> dict:
    """Accuracy and log loss of an sp4sc model file on the study's eval clips, with its size.

    Uses the first fold's eval clips (TAU2020: fold1 evaluate). Parameters and
    MACs per clip (thop) are counted on the BatchNorm-folded model.
    """
    from sp4sc.frontend.audio import load_audio
    from sp4sc.models.checkpoint import load_model
    from sp4sc.frontend.features import LogMel
    from sp4sc.metrics import accuracy, log_loss, macro_accuracy

    loaded = load_model(path)
    ckpt_classes = list(loaded.classes)
    if sorted(ckpt_classes) != sorted(data.classes):
        raise Sp4scError(
            f"{path}: its classes {ckpt_classes[:3]}... are not the dataset's {list(data.classes)[:3]}...; "
            "compare checkpoints trained on the same dataset"
        )
    order = [ckpt_classes.index(c) for c in data.classes]
    fe = loaded.frontend
    logmel = LogMel(fe)
    model = loaded.model.eval()
    clips = data.folds[0][1]
    probs = []
    with torch.inference_mode():
        for i in range(0, len(clips), 16):
            batch = np.stack([load_audio(data.root / c.path, fe.sample_rate, fe.duration) for c in clips[i : i + 16]])
            mel = logmel(torch.from_numpy(batch))  # (batch, frames, mels)
            logits = model(mel.unsqueeze(1))  # (batch, classes)
            probs.append(torch.softmax(logits.float(), dim=-1).numpy())
    p = np.concatenate(probs)[:, order]
    y = np.array([c.label for c in clips])
    params, macs = _folded_size(loaded)
    return {
        "name": f"{loaded.name} ({Path(path).name})",
        "kind": "checkpoint",
        "checkpoint": str(path),
        "accuracy": float(macro_accuracy(y, p, len(data.classes))),
        "micro_accuracy": float(accuracy(y, p)),
        "logloss": float(log_loss(y, p)),
        "params": int(params),
        "macs_per_clip": float(macs),
        "macs_counter": f"thop on the folded model, one {fe.duration:g} s clip",
        "eval_clips": len(clips),
    }


def compare_cv(folder: str | os.PathLike, data: StudyData) -> dict:
    """A row for an ``sp4sc cv`` output folder: the cross-validated model against the same folds.

    Accuracy (class-averaged) and log loss are ``cv.json``'s means over its folds (each fold's
    last checkpoint on its validation fold, the same folds as the probe's); parameters and MACs
    per clip (thop) are counted on the first fold's checkpoint, BatchNorm folded. A run that
    is not finished (``"complete": false``) is named "k of n folds done" and warned about.
    """
    from sp4sc.models.checkpoint import load_model

    folder = Path(folder)
    summary = json.loads((folder / "cv.json").read_text(encoding="utf-8"))
    classes = summary.get("classes") or []
    if classes and sorted(classes) != sorted(data.classes):
        raise Sp4scError(f"{folder}: its classes {classes[:3]}... are not the dataset's {list(data.classes)[:3]}...; "
                         "compare cross-validations of the same dataset")
    folds = summary["folds"]
    first = folder / f"fold{folds[0]['fold']}" / "checkpoints" / "last.ckpt"
    loaded = load_model(first)
    fe = loaded.frontend
    params, macs = _folded_size(loaded)
    todo = summary.get("folds_to_do") or []
    if summary.get("complete") is False and todo:  # `sp4sc cv` still running or stopped mid-way
        span = f"{len(folds)} of {len(folds) + len(todo)} folds done"
        logger.warning(f"--compare {folder}: the cross-validation is not finished (folds "
                       f"{' '.join(map(str, todo))} still to run); its row covers {span}")
    else:
        span = f"{len(folds)}-fold cv" if len(folds) > 1 else "cv, 1 fold"
    return {
        "name": f"{loaded.name} from scratch ({span}, {Path(summary['recipe']).name})",
        "kind": "cv",
        "checkpoint": str(folder),
        "accuracy": float(summary["mean"]["class_avg_accuracy"]),
        "accuracy_std": None if (summary.get("std") or {}).get("class_avg_accuracy") is None  # 1 fold: no spread
        else float(summary["std"]["class_avg_accuracy"]),
        "logloss": float(summary["mean"]["logloss"]),
        "params": int(params),
        "macs_per_clip": float(macs),
        "macs_counter": f"thop on the folded model, one {fe.duration:g} s clip",
        "folds": [f["fold"] for f in folds],
    }


# ----------------------------------------------------------------------------- outputs
def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def _num(v: float | None, fmt: str = "{:.3f}") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def format_tables(result: dict) -> str:
    """The results as Markdown tables (accuracy, cost, comparison)."""
    tag = " **[RANDOM-INIT encoder: not a result]**" if result["random_init"] else ""
    lines = [
        f"### {result['encoder']} linear probe on {result['dataset']} ({result['splits']['eval']}), "
        f"{result['seeds']} seeds, mean ± std{tag}",
        "",
        "| δt (s) | aggregation | accuracy (%) | log loss |",
        "|---:|---|---:|---:|",
    ]
    for r in result["rows"]:
        ll = "n/a" if r["logloss"] is None else f"{r['logloss']:.3f} ± {r['logloss_std']:.3f}"
        lines.append(f"| {r['dt']:g} | {r['aggregation']} | {_pct(r['accuracy'])} ± {_pct(r['std'])} | {ll} |")
    lines += [
        "",
        f"### Cost per δt ({result['encoder']}, {result['device']}){tag}",
        "",
        "| δt (s) | windows/s | encoder s per hour of audio | peak memory (MiB) | GFLOPs/window |",
        "|---:|---:|---:|---:|---:|",
    ]
    for c in result["cost"]:
        lines.append(
            f"| {c['dt']:g} | {c['windows_per_s']:.1f} | {c['encoder_s_per_audio_hour']:.1f} | "
            f"{c['peak_mib']:.0f} ({c['memory_kind']}) | {c['gflops_per_window']:.2f} |"
        )
    lines += [
        "",
        f"### Comparison on {result['dataset']} ({result['splits']['eval']}){tag}",
        "",
        "| system | accuracy (%) | log loss | parameters | MACs per clip |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in result["compare"]:
        lines.append(
            f"| {c['name']} | {_pct(c['accuracy'])}{' ± ' + _pct(c['accuracy_std']) if c.get('accuracy_std') is not None else ''} | {_num(c['logloss'])} | {c['params']:,} | {c['macs_per_clip'] / 1e6:,.1f} M |"
        )
    lines += ["", result["machine"]]
    if result["random_init"]:
        lines += ["", f"Note: {RANDOM_INIT_NOTE}."]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str | os.PathLike) -> None:
    """PNG of accuracy and cost against δt (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sp4sc.fileio import atomic_path

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for agg in dict.fromkeys(r["aggregation"] for r in result["rows"]):
        rs = [r for r in result["rows"] if r["aggregation"] == agg]
        ax1.errorbar([r["dt"] for r in rs], [100 * r["accuracy"] for r in rs],
                     yerr=[100 * r["std"] for r in rs], marker="o", capsize=3, label=agg)
    ax1.set_xlabel("δt (s)")
    ax1.set_ylabel("accuracy (%)")
    ax1.set_title("probe accuracy")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    dts = [c["dt"] for c in result["cost"]]
    ax2.plot(dts, [c["encoder_s_per_audio_hour"] for c in result["cost"]], "o-", color="C3", label="encoder s / h audio")
    ax2.set_xlabel("δt (s)")
    ax2.set_ylabel("encoder seconds per hour of audio", color="C3")
    ax2b = ax2.twinx()
    ax2b.plot(dts, [c["gflops_per_window"] for c in result["cost"]], "s--", color="C4", label="GFLOPs/window")
    ax2b.set_ylabel("GFLOPs per window", color="C4")
    ax2.set_title(f"cost ({result['device']})")
    ax2.grid(alpha=0.3)
    title = f"{result['encoder']} on {result['dataset']}"
    if result["random_init"]:
        title += " — RANDOM-INIT encoder (not a result)"
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write_outputs(result: dict, out: str | os.PathLike) -> dict[str, str]:
    """Write results.json, table.md and plot.png into ``out`` (each atomically); return their paths."""
    from sp4sc.fileio import write_json, write_text

    out = Path(out)
    paths = {"json": out / "results.json", "table": out / "table.md", "plot": out / "plot.png"}
    write_json(paths["json"], result)
    write_text(paths["table"], format_tables(result))
    plot(result, paths["plot"])
    return {k: str(v) for k, v in paths.items()}
