"""``SceneDataModule``: the datasets, the feature cache and the loaders for Lightning.

Datasets and splits:

- ``tau2020``: fold1 train / fold1 evaluate (validation and test; the test
  list names the same files); predict runs on fold1 test.
- ``esc``: cross-validation, ``fold`` is the validation (and test, predict) fold.
- ``tau2022``: DCASE 2022-2025 Task 1 (1 s clips): trains on the development-train
  split ``split`` (5, 10, 25, 50 or 100 %: ``split_setup/split<N>.csv``, or
  ``split_dir``); the development-test split ``test.csv`` is validation, test and
  predict, as in the DCASE 2024 baseline (CPJKU/dcase2024_task1_baseline,
  ``run_training.py``: ``trainer.fit(..., train_dl, test_dl)``). Audio is read
  from ``root/<filename>``, i.e. ``root/audio/...`` as the split files name it.
- ``toy``: the procedural dataset of :mod:`sp4sc.data.toy` in the TAU2020
  layout (generated on first use when ``root`` is None), split like tau2020.

``prepare_data`` (run by Lightning on one process per node, before the others
start) generates the toy data if needed and builds the feature cache of every
clip the splits use; ``setup`` opens the cache read-only (it is then shared by
all DDP ranks and DataLoader workers through the page cache). Items are read
lazily from the memory map; ``keep_on_device=True`` instead copies each split
once to the training device (the GPU when there is one) and serves batches
from there, for small datasets on fast accelerators.

Batches are dicts: ``x`` float32 ``(B, 1, frames, mels)``, ``y`` int64 ``(B,)``
(-1 when unlabelled), ``device`` list of device names (``""`` when unknown),
``index`` int64 ``(B,)`` position of the clip in its split (see :meth:`clips`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from sp4sc.data.cache import FeatureCache, build_cache
from sp4sc.data.index import Clip, DatasetIndex, load_index
from sp4sc.errors import Sp4scError
from sp4sc.frontend.features import FrontEndConfig, frontend_preset

DATASETS = ("toy", "tau2020", "esc", "tau2022")


def default_cache_dir() -> Path:
    """``$SP4SC_CACHE/features`` or ``~/.cache/sp4sc/features``."""
    from sp4sc.data.toy import default_cache_root

    return default_cache_root() / "features"


class CachedSplit(Dataset):
    """Clips of one split, read lazily from the memory-mapped feature cache.

    Args:
        cache: the feature cache holding every clip of the split.
        clips: the split's clips, in order.
    """

    def __init__(self, cache: FeatureCache, clips: list[Clip]):
        self.cache = cache
        self.clips = clips
        self.rows = np.array([cache.row(c.path) for c in clips], dtype=np.int64)
        self.labels = torch.tensor([-1 if c.label is None else c.label for c in clips], dtype=torch.long)
        self.devices = [c.device or "" for c in clips]

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict[str, Any]:
        x = torch.from_numpy(np.asarray(self.cache[int(self.rows[i])], dtype=np.float32))  # (frames, mels)
        return {"x": x.unsqueeze(0), "y": self.labels[i], "device": self.devices[i], "index": i}


class _OnDevice:
    """A split held whole on one torch device; ``collate`` gathers a batch of indices there."""

    def __init__(self, split: CachedSplit, device: torch.device):
        # Fancy indexing copies just this split's rows out of the memory map; float16 halves the memory.
        self.x = torch.from_numpy(np.ascontiguousarray(split.cache.array[split.rows])).to(device)  # (N, frames, mels)
        self.y = split.labels.to(device)
        self.devices = split.devices

    def collate(self, idx: list[int]) -> dict[str, Any]:
        i = torch.tensor(idx, dtype=torch.long, device=self.x.device)
        return {
            "x": self.x.index_select(0, i).float().unsqueeze(1),  # (B, 1, frames, mels)
            "y": self.y.index_select(0, i),
            "device": [self.devices[k] for k in idx],
            "index": i,
        }


class SceneDataModule(pl.LightningDataModule):
    """Scene-classification data from a cached log-mel front end.

    Args:
        dataset: "toy", "tau2020" or "esc".
        root: dataset root (the folder with meta.csv, or with meta/ and audio/
            for esc); None only for toy (generated in the cache on first use).
        frontend: front-end preset (``sp4sc.frontend.features.PRESETS``).
        duration: clip length in seconds (overrides the preset's; for toy the
            default is the toy clip length).
        fold: tau2020/toy: 1 (the only official fold); esc: the validation fold.
        split: tau2022 only: the development-train split in % (5, 10, 25, 50, 100).
        split_dir: tau2022 only: folder of the split files (default
            ``root/split_setup``; relative to ``root``).
        train_devices: train only on clips of these devices (e.g. ``[a]`` for a
            device-specific fine-tuning, DCASE 2025); validation and test keep every device.
        batch_size: training batch size.
        eval_batch_size: validation/test/predict batch size (default batch_size).
        num_workers: DataLoader worker processes (0: read in the main process).
        cache_dir: feature-cache folder (default ``$SP4SC_CACHE/features`` or
            ``~/.cache/sp4sc/features``).
        keep_on_device: hold each split on the training device (GPU) instead of
            reading the memory map per batch.
        check_audio: check that every listed audio file exists when indexing.
        cache_workers: audio-decoding threads for building the cache (None: auto).
        progress: show a progress bar while building the cache.
        seed: seed of the training shuffle (repeatable CPU runs).
        toy_n_per_class_device: size of the toy dataset (30 x this clips).
        toy_duration: toy clip length in seconds.
    """

    def __init__(
        self,
        dataset: str = "toy",
        root: Optional[str] = None,
        frontend: str = "sp4asc",
        duration: Optional[float] = None,
        fold: int = 1,
        split: Optional[int] = None,
        split_dir: Optional[str] = None,
        train_devices: Optional[list[str]] = None,
        batch_size: int = 32,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
        cache_dir: Optional[str] = None,
        keep_on_device: bool = False,
        check_audio: bool = True,
        cache_workers: Optional[int] = None,
        progress: bool = True,
        seed: int = 0,
        toy_n_per_class_device: int = 12,
        toy_duration: float = 2.0,
    ):
        super().__init__()
        if dataset not in DATASETS:
            raise Sp4scError(f"--data.dataset {dataset!r}: unknown; choose one of {', '.join(DATASETS)}")
        if root is None and dataset != "toy":
            raise Sp4scError(f"--data.root: required for dataset {dataset!r} (the dataset's root folder)")
        if dataset in ("tau2020", "toy") and fold != 1:
            raise Sp4scError(f"--data.fold {fold}: {dataset} has only the official fold 1")
        if dataset == "tau2022":
            from sp4sc.data.index import TAU22_TRAIN_SPLITS

            if split not in TAU22_TRAIN_SPLITS:
                raise Sp4scError(f"--data.split {split}: tau2022 trains on one of the DCASE 2024 splits "
                                 f"{', '.join(map(str, TAU22_TRAIN_SPLITS))} (% of the development-train set)")
        elif split is not None or split_dir is not None:
            raise Sp4scError(f"--data.split / --data.split_dir: only for dataset tau2022, not {dataset!r}")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise Sp4scError("--data.batch_size: must be at least 1")
        if num_workers < 0:
            raise Sp4scError("--data.num_workers: must be >= 0")
        self.save_hyperparameters()
        self.dataset = dataset
        self.root = root
        self.frontend = frontend
        self.duration = duration
        self.fold = fold
        self.split_name = split
        self.split_dir = split_dir
        self.train_devices = [str(d) for d in train_devices] if train_devices else None
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.keep_on_device = keep_on_device
        self.check_audio = check_audio
        self.cache_workers = cache_workers
        self.progress = progress
        self.seed = seed
        self.toy_n_per_class_device = toy_n_per_class_device
        self.toy_duration = toy_duration
        if duration is None and dataset == "toy":
            duration = toy_duration
        self._cfg: FrontEndConfig = frontend_preset(frontend, **({} if duration is None else {"duration": float(duration)}))
        self._index: DatasetIndex | None = None
        self._cache: FeatureCache | None = None
        self._splits: dict[str, CachedSplit] = {}
        self._on_device: dict[str, _OnDevice] = {}

    # ---------------------------------------------------------------- data

    @property
    def frontend_cfg(self) -> FrontEndConfig:
        """The front end the features are computed with."""
        return self._cfg

    def dataset_root(self) -> Path:
        """The dataset root (generating the toy dataset when needed)."""
        if self.dataset == "toy":
            from sp4sc.data.toy import ensure_toy_dataset

            return ensure_toy_dataset(self.root, n_per_class_device=self.toy_n_per_class_device, duration=self.toy_duration)
        return Path(self.root).expanduser()

    def index(self) -> DatasetIndex:
        """The dataset index (read once)."""
        if self._index is None:
            kind = "tau2020" if self.dataset == "toy" else self.dataset
            self._index = load_index(kind, self.dataset_root(), check_audio=False,
                                     **({"split_dir": self.split_dir} if kind == "tau2022" else {}))
        return self._index

    def split_clips(self) -> dict[str, list[Clip]]:
        """Clips per stage: ``train``, ``val``, ``test``, ``predict`` (training clips of ``train_devices`` only, if set)."""
        return self._filter_devices(self._stage_clips())

    def _stage_clips(self) -> dict[str, list[Clip]]:
        idx = self.index()
        if idx.name == "esc":
            train, val = idx.cv_split(self.fold)
            return {"train": train, "val": val, "test": val, "predict": val}
        if idx.name == "tau2022":
            test = idx.split("test")
            return {"train": idx.split(f"split{self.split_name}"), "val": test, "test": test, "predict": test}
        return {"train": idx.split("train"), "val": idx.split("evaluate"), "test": idx.split("evaluate"),
                "predict": idx.split("test")}

    def _filter_devices(self, splits: dict[str, list[Clip]]) -> dict[str, list[Clip]]:
        """Keep only the ``train_devices`` clips in ``train`` (a one-line error when none is left)."""
        if not self.train_devices:
            return splits
        train = [c for c in splits["train"] if c.device in self.train_devices]
        if not train:
            present = sorted({c.device for c in splits["train"] if c.device})
            raise Sp4scError(f"--data.train_devices {self.train_devices}: no training clip is from these devices "
                             f"(the training split has {', '.join(present) or 'no device names'})")
        return {**splits, "train": train}

    def clips(self, stage: str) -> list[Clip]:
        """Clips of a stage ("train", "val", "test", "predict"), in batch ``index`` order."""
        return self.split_clips()[stage]

    def needed_paths(self) -> list[str]:
        """Every clip path the stages use, once, in order."""
        seen: dict[str, None] = {}
        for clips in self.split_clips().values():
            for c in clips:
                seen.setdefault(c.path, None)
        return list(seen)

    def build_cache(self) -> FeatureCache:
        """Build (or reuse) the feature cache of every needed clip."""
        from sp4sc.data.index import check_files_exist

        idx = self.index()
        paths = self.needed_paths()
        if self.check_audio:
            check_files_exist(idx.root, [Clip(p) for p in paths], hint="check --data.root (the folder holding the metadata)")
        return build_cache(idx.root, paths, self._cfg, self.cache_dir, workers=self.cache_workers, progress=self.progress)

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names; labels index this tuple."""
        return tuple(self.index().classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def devices(self) -> tuple[str, ...]:
        """Recording devices of the validation clips, sorted (empty when unknown)."""
        return tuple(sorted({c.device for c in self.clips("val") if c.device}))

    # ------------------------------------------------------------ lightning

    def prepare_data(self) -> None:
        # One process per node: generate toy data, build the cache. Ranks then only read it.
        self.build_cache()

    def setup(self, stage: Optional[str] = None) -> None:
        if self._cache is None:
            self._cache = self.build_cache()  # complete after prepare_data: only opens it
        for name, clips in self.split_clips().items():
            if name not in self._splits and clips:
                self._splits[name] = CachedSplit(self._cache, clips)

    def split(self, stage: str) -> CachedSplit:
        """The dataset of a stage (after :meth:`setup`)."""
        if self._cache is None:
            self.setup()
        if stage not in self._splits:
            raise Sp4scError(f"{self.dataset}: the {stage} split is empty")
        return self._splits[stage]

    def _target_device(self) -> torch.device:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            try:
                return trainer.strategy.root_device
            except Exception:  # noqa: BLE001 - not attached yet
                pass
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")

    def _loader(self, stage: str, shuffle: bool, batch_size: int) -> DataLoader:
        split = self.split(stage)
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        if self.keep_on_device:
            if stage not in self._on_device:
                self._on_device[stage] = _OnDevice(split, self._target_device())
            held = self._on_device[stage]
            return DataLoader(range(len(split)), batch_size=batch_size, shuffle=shuffle, generator=generator,
                              collate_fn=held.collate, num_workers=0)
        return DataLoader(
            split, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0 and stage == "train", pin_memory=torch.cuda.is_available(),
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", False, self.eval_batch_size)

    def teardown(self, stage: Optional[str] = None) -> None:
        self._on_device.clear()


__all__ = ["SceneDataModule", "CachedSplit", "default_cache_dir"]
