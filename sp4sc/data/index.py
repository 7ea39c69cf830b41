"""Dataset indexes: TAU Urban Acoustic Scenes 2020 Mobile (dev), TAU 2021 Mobile (eval), ESC-50-format csv.

``load_index(dataset, root)`` reads a dataset's metadata into a
:class:`DatasetIndex` of :class:`Clip` records, validating as it goes. Every
problem is a one-line :class:`sp4sc.errors.Sp4scError` naming the file, the
line and the value at fault.

Layouts (facts from the DCASE 2020/2021 Task 1A and ESC-50 releases):

- ``tau2020``: ``meta.csv`` (filename, scene_label, identifier, source_label)
  and ``evaluation_setup/fold1_{train,evaluate,test}.csv`` (filename and
  scene_label; the test list has filename only), all tab-separated with a
  header. The city is the identifier's prefix before ``-``.
- ``tau2021eval``: ``evaluation_setup/fold1_test.csv`` (filename), no labels.
- ``esc``: ``meta/<name>.csv``, comma-separated, columns filename, fold,
  target, category, ...; audio in ``audio/``. Classes are the categories
  present, sorted; splits are ``fold1`` .. ``foldK``.
- ``tau2022``: TAU Urban Acoustic Scenes 2022 Mobile (DCASE 2022-2025 Task 1,
  1 s segments). The DCASE 2024 development-train splits
  ``split_setup/split{5,10,25,50,100}.csv`` and ``split_setup/test.csv``
  (tab-separated, ``filename<TAB>scene_label``), where the official baseline
  (CPJKU/dcase2024_task1_baseline, README "Data Splits") puts them; another
  folder with ``split_dir``. Splits are named ``split5`` .. ``split100`` and
  ``test``; a split whose file is absent is simply not in the index (asking
  for it is a one-line error). With ``meta.csv`` (filename, scene_label,
  identifier, source_label; 230,350 rows in the official release) the clips
  come from it; without it, from the split files, reading scene, city,
  location and device from the file name
  ``audio/<scene>-<city>-<location id>-<segment id>-<second 0-9>-<device>.wav``
  (e.g. ``audio/airport-lisbon-1000-40000-0-a.wav``). Audio lives in
  ``ROOT/audio/`` as the file names say.
"""

from __future__ import annotations

import csv
import os
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from sp4sc.constants import SCENES
from sp4sc.errors import Sp4scError

DATASETS = ("tau2020", "tau2021eval", "esc", "tau2022")
TAU_SPLITS = ("train", "evaluate", "test")
# DCASE 2024 Task 1 development-train splits (% of the full train set) and the development-test split
TAU22_TRAIN_SPLITS = (5, 10, 25, 50, 100)
TAU22_SPLITS = tuple(f"split{p}" for p in TAU22_TRAIN_SPLITS) + ("test",)
TAU22_SPLIT_DIR = "split_setup"
MISSING_SHOWN = 5  # names listed in the "files missing on disk" error


@dataclass(frozen=True)
class Clip:
    """One audio clip of a dataset.

    Attributes:
        path: file path relative to the dataset root, posix style.
        scene: class name (scene or ESC category); None when unlabelled.
        label: index of ``scene`` in the dataset's classes; None when unlabelled.
        device: recording device (TAU source_label), None when unknown.
        city: recording city (TAU identifier prefix), None when unknown.
        fold: cross-validation fold (ESC), None otherwise.
        location: recording location (TAU identifier, e.g. ``lisbon-1000``),
            None when unknown.
    """

    path: str
    scene: str | None = None
    label: int | None = None
    device: str | None = None
    city: str | None = None
    fold: int | None = None
    location: str | None = None


@dataclass
class DatasetIndex:
    """The clips of a dataset, by split.

    Attributes:
        name: dataset kind ("tau2020", "tau2021eval", "esc").
        root: dataset root folder; clip paths are relative to it.
        classes: class names; a clip's label indexes this tuple.
        splits: split name -> clips, in file order.
        catalog: every clip the main metadata lists (TAU2020's meta.csv has
            clips that no fold1 split uses); None when the splits cover all.
    """

    name: str
    root: Path
    classes: tuple[str, ...]
    splits: dict[str, list[Clip]] = field(default_factory=dict)
    catalog: list[Clip] | None = None
    split_dir: Path | None = None

    def split(self, name: str) -> list[Clip]:
        """The clips of one split."""
        if name not in self.splits:
            if self.name == "tau2022" and name in TAU22_SPLITS:
                raise Sp4scError(
                    f"{self.split_dir / (name + '.csv')}: not found, so the tau2022 split {name!r} is unavailable "
                    f"(present: {', '.join(self.splits) or 'none'}); put {name}.csv there or set --data.split_dir"
                )
            raise Sp4scError(f"{self.name} at {self.root}: no split {name!r}; it has {sorted(self.splits)}")
        return self.splits[name]

    def all_clips(self) -> list[Clip]:
        """Every clip once (first occurrence wins): the catalog's, then the splits' in order."""
        seen: dict[str, Clip] = {}
        for clips in [self.catalog or [], *self.splits.values()]:
            for c in clips:
                seen.setdefault(c.path, c)
        return list(seen.values())

    @property
    def folds(self) -> list[int]:
        """Fold numbers present (ESC-format datasets)."""
        return sorted({c.fold for c in self.all_clips() if c.fold is not None})

    def cv_split(self, k: int) -> tuple[list[Clip], list[Clip]]:
        """Cross-validation split of an ESC-format dataset: (train = other folds, validation = fold ``k``)."""
        folds = self.folds
        if not folds:
            raise Sp4scError(f"{self.name} at {self.root}: has no folds; cross-validation needs an ESC-format dataset")
        if k not in folds:
            raise Sp4scError(f"fold {k}: not in {self.name} at {self.root}; folds are {folds}")
        clips = self.all_clips()
        return [c for c in clips if c.fold != k], [c for c in clips if c.fold == k]

    def path(self, clip: Clip) -> Path:
        """Absolute path of a clip's file."""
        return self.root / clip.path


# ---------------------------------------------------------------------------- reading


def _read_table(path: Path, required: Iterable[str], delimiter: str) -> list[tuple[int, dict[str, str]]]:
    """Rows of a delimited file with a header as ``(line number, row)``; checks columns and delimiter."""
    kind = "tab" if delimiter == "\t" else "comma"
    if not path.is_file():
        raise Sp4scError(f"{path}: not found; check the dataset root and layout")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise Sp4scError(f"{path}: not a UTF-8 text file ({exc.reason}); is this the metadata file?") from exc
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise Sp4scError(f"{path}: is empty; expected a {kind}-separated header ({', '.join(required)}) and rows")
    header_line = lines[0]
    required = list(required)
    other = "," if delimiter == "\t" else "\t"
    if delimiter not in header_line and other in header_line:
        raise Sp4scError(
            f"{path}: the header is {'comma' if other == ',' else 'tab'}-separated ({header_line.strip()!r}); "
            f"this file must be {kind}-separated"
        )
    reader = csv.reader(lines, delimiter=delimiter)
    header = [h.strip() for h in next(reader)]
    missing = [c for c in required if c not in header]
    if missing:
        raise Sp4scError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
            f"the header has {header}, expected {required}"
        )
    rows = []
    for lineno, values in enumerate(reader, start=2):
        if not values or all(not v.strip() for v in values):
            continue
        if len(values) == 1 and other in values[0] and len(header) > 1:
            raise Sp4scError(f"{path}: line {lineno} is {'comma' if other == ',' else 'tab'}-separated; "
                             f"this file must be {kind}-separated")
        if len(values) < len(header):
            raise Sp4scError(f"{path}: line {lineno} has {len(values)} fields, the header has {len(header)}")
        rows.append((lineno, {h: v.strip() for h, v in zip(header, values)}))
    if not rows:
        raise Sp4scError(f"{path}: has a header but no rows")
    return rows


def _safe_relpath(path: Path, lineno: int, name: str) -> str:
    """Normalised posix path relative to the root; refuse absolute paths and ``..``."""
    if not name:
        raise Sp4scError(f"{path}: line {lineno}: empty filename")
    rel = name.replace("\\", "/")
    if rel.startswith("/") or (len(rel) > 1 and rel[1] == ":") or os.path.isabs(name):
        raise Sp4scError(f"{path}: line {lineno}: absolute path {name!r}; paths must be relative to the dataset root")
    norm = posixpath.normpath(rel)
    if norm == ".." or norm.startswith("../"):
        raise Sp4scError(f"{path}: line {lineno}: path {name!r} escapes the dataset root (..); paths must stay inside it")
    return norm


def _check_duplicates(path: Path, names: list[tuple[int, str]]) -> None:
    first: dict[str, int] = {}
    for lineno, name in names:
        if name in first:
            raise Sp4scError(f"{path}: duplicate filename {name!r} on lines {first[name]} and {lineno}")
        first[name] = lineno


def _check_scene(path: Path, lineno: int, scene: str) -> int:
    try:
        return SCENES.index(scene)
    except ValueError:
        raise Sp4scError(
            f"{path}: line {lineno}: unknown scene label {scene!r}; expected one of {', '.join(SCENES)}"
        ) from None


def check_files_exist(root: Path, clips: Iterable[Clip], hint: str = "check the root or pass --skip-audio-check") -> None:
    """One error listing how many listed files are missing under ``root`` and the first few names."""
    missing = [c.path for c in clips if not os.path.isfile(os.path.join(root, c.path))]
    if missing:
        shown = ", ".join(missing[:MISSING_SHOWN]) + (", ..." if len(missing) > MISSING_SHOWN else "")
        raise Sp4scError(
            f"{root}: {len(missing)} listed audio file{'s are' if len(missing) > 1 else ' is'} missing on disk "
            f"({shown}); {hint}"
        )


def _root(root: str | os.PathLike) -> Path:
    r = Path(root).expanduser()
    if not r.is_dir():
        raise Sp4scError(f"{r}: dataset root is not a folder")
    return r


def _load_tau2020(root: Path) -> DatasetIndex:
    meta_path = root / "meta.csv"
    rows = _read_table(meta_path, ("filename", "scene_label", "identifier", "source_label"), "\t")
    names = [(ln, _safe_relpath(meta_path, ln, r["filename"])) for ln, r in rows]
    _check_duplicates(meta_path, names)
    meta: dict[str, Clip] = {}
    for (lineno, r), (_, name) in zip(rows, names):
        label = _check_scene(meta_path, lineno, r["scene_label"])
        ident = r["identifier"]
        city = ident.split("-", 1)[0] if ident else None
        meta[name] = Clip(name, r["scene_label"], label, r["source_label"] or None, city or None, None)
    splits: dict[str, list[Clip]] = {}
    for split in TAU_SPLITS:
        p = root / "evaluation_setup" / f"fold1_{split}.csv"
        cols = ("filename",) if split == "test" else ("filename", "scene_label")
        srows = _read_table(p, cols, "\t")
        snames = [(ln, _safe_relpath(p, ln, r["filename"])) for ln, r in srows]
        _check_duplicates(p, snames)
        clips = []
        for (lineno, r), (_, name) in zip(srows, snames):
            if name not in meta:
                raise Sp4scError(f"{p}: line {lineno}: {name!r} is not listed in {meta_path}")
            if "scene_label" in r and r["scene_label"]:
                _check_scene(p, lineno, r["scene_label"])
                if r["scene_label"] != meta[name].scene:
                    raise Sp4scError(
                        f"{p}: line {lineno}: {name!r} has scene {r['scene_label']!r} here "
                        f"but {meta[name].scene!r} in {meta_path}"
                    )
            clips.append(meta[name])
        splits[split] = clips
    return DatasetIndex("tau2020", root, SCENES, splits, catalog=list(meta.values()))


def _load_tau2021eval(root: Path) -> DatasetIndex:
    p = root / "evaluation_setup" / "fold1_test.csv"
    rows = _read_table(p, ("filename",), "\t")
    names = [(ln, _safe_relpath(p, ln, r["filename"])) for ln, r in rows]
    _check_duplicates(p, names)
    return DatasetIndex("tau2021eval", root, SCENES, {"test": [Clip(n) for _, n in names]})


def _esc_csv(root: Path) -> Path:
    meta = root / "meta"
    if not meta.is_dir():
        raise Sp4scError(f"{root}: no meta/ folder; an ESC-50-format dataset has meta/<name>.csv and audio/")
    csvs = sorted(meta.glob("*.csv"))
    if not csvs:
        raise Sp4scError(f"{meta}: no .csv file; expected e.g. esc50.csv")
    if len(csvs) > 1:
        preferred = [c for c in csvs if c.name in ("esc50.csv", "esc10.csv")]
        if len(preferred) != 1:
            raise Sp4scError(f"{meta}: several csv files ({', '.join(c.name for c in csvs)}); keep only one")
        return preferred[0]
    return csvs[0]


def _load_esc(root: Path) -> DatasetIndex:
    p = _esc_csv(root)
    rows = _read_table(p, ("filename", "fold", "target", "category"), ",")
    names = [(ln, _safe_relpath(p, ln, posixpath.join("audio", r["filename"]))) for ln, r in rows]
    _check_duplicates(p, names)
    classes = tuple(sorted({r["category"] for _, r in rows}))
    if "" in classes:
        ln = next(ln for ln, r in rows if not r["category"])
        raise Sp4scError(f"{p}: line {ln}: empty category")
    by_fold: dict[int, list[Clip]] = {}
    for (lineno, r), (_, name) in zip(rows, names):
        try:
            fold = int(r["fold"])
        except ValueError:
            raise Sp4scError(f"{p}: line {lineno}: fold {r['fold']!r} is not an integer") from None
        if fold < 1:
            raise Sp4scError(f"{p}: line {lineno}: fold {fold} must be >= 1")
        c = Clip(name, r["category"], classes.index(r["category"]), None, None, fold)
        by_fold.setdefault(fold, []).append(c)
    splits = {f"fold{k}": by_fold[k] for k in sorted(by_fold)}
    return DatasetIndex("esc", root, classes, splits)


def parse_tau22_name(name: str) -> tuple[str, str, str, str] | None:
    """``audio/airport-lisbon-1000-40000-0-a.wav`` -> (scene, city, location, device), None if not that pattern.

    The TAU Urban Acoustic Scenes 2022 Mobile naming (README of the shared split
    files; the DCASE 2024 baseline reads the device the same way, as the text
    after the last ``-``): ``<scene>-<city>-<location id>-<segment id>-<second>-<device>.wav``.
    The location is the dataset's ``identifier``, ``<city>-<location id>``.
    """
    stem = posixpath.basename(name)
    if not stem.endswith(".wav"):
        return None
    parts = stem[: -len(".wav")].split("-")
    if len(parts) != 6 or not all(parts):
        return None
    scene, city, loc, _segment, second, device = parts
    if not second.isdigit():
        return None
    return scene, city, f"{city}-{loc}", device


def tau22_split_dir(root: Path, split_dir: str | os.PathLike | None) -> Path:
    """The folder holding ``split*.csv`` / ``test.csv``: ``split_dir``, relative paths under ``root``."""
    if split_dir is None:
        return root / TAU22_SPLIT_DIR
    d = Path(split_dir).expanduser()
    return d if d.is_absolute() else root / d


def _tau22_clip_from_name(path: Path, lineno: int, name: str, scene: str | None) -> Clip:
    parsed = parse_tau22_name(name)
    if parsed is None:
        raise Sp4scError(
            f"{path}: line {lineno}: {name!r} is not a TAU22 file name "
            "(<scene>-<city>-<location id>-<segment id>-<second>-<device>.wav); is this a TAU Urban Acoustic Scenes 2022 list?"
        )
    fscene, city, location, device = parsed
    scene = scene or fscene
    if scene != fscene:
        raise Sp4scError(f"{path}: line {lineno}: {name!r} is labelled {scene!r} but its name says {fscene!r}")
    label = _check_scene(path, lineno, scene)
    return Clip(name, scene, label, device, city, None, location)


def _load_tau2022(root: Path, split_dir: str | os.PathLike | None = None) -> DatasetIndex:
    sdir = tau22_split_dir(root, split_dir)
    meta_path = root / "meta.csv"
    meta: dict[str, Clip] | None = None
    if meta_path.is_file():
        rows = _read_table(meta_path, ("filename", "scene_label", "identifier", "source_label"), "\t")
        names = [(ln, _safe_relpath(meta_path, ln, r["filename"])) for ln, r in rows]
        _check_duplicates(meta_path, names)
        meta = {}
        for (lineno, r), (_, name) in zip(rows, names):
            label = _check_scene(meta_path, lineno, r["scene_label"])
            ident = r["identifier"] or None
            city = ident.split("-", 1)[0] if ident else None
            meta[name] = Clip(name, r["scene_label"], label, r["source_label"] or None, city, None, ident)
    present = [s for s in TAU22_SPLITS if (sdir / f"{s}.csv").is_file()]
    if meta is None and not present:
        raise Sp4scError(
            f"{root}: no meta.csv and no split files in {sdir} (split5.csv .. split100.csv, test.csv); "
            "point --root at the TAU22 development folder or --split-dir / --data.split_dir at the split files"
        )
    splits: dict[str, list[Clip]] = {}
    for split in present:
        p = sdir / f"{split}.csv"
        srows = _read_table(p, ("filename",), "\t")
        snames = [(ln, _safe_relpath(p, ln, r["filename"])) for ln, r in srows]
        _check_duplicates(p, snames)
        clips = []
        for (lineno, r), (_, name) in zip(srows, snames):
            scene = r.get("scene_label") or None
            if meta is not None:
                if name not in meta:
                    raise Sp4scError(f"{p}: line {lineno}: {name!r} is not listed in {meta_path}")
                if scene is not None and scene != meta[name].scene:
                    raise Sp4scError(f"{p}: line {lineno}: {name!r} has scene {scene!r} here "
                                     f"but {meta[name].scene!r} in {meta_path}")
                clips.append(meta[name])
            else:
                clips.append(_tau22_clip_from_name(p, lineno, name, scene))
        splits[split] = clips
    return DatasetIndex("tau2022", root, SCENES, splits, catalog=list(meta.values()) if meta is not None else None,
                        split_dir=sdir)


def tau22_nesting(index: DatasetIndex) -> list[str]:
    """Problems with the TAU22 splits' structure (empty when sound).

    The DCASE 2024 rules (baseline README, "Data Splits"): each smaller split is
    inside the larger ones, none overlaps the test split, and a 10 s recording
    (``<scene>-<city>-<location>-<segment>``, the name without second and
    device) is in a split whole or not at all (checked between train and test).
    """
    problems = []
    train = [s for s in TAU22_SPLITS[:-1] if s in index.splits]
    sets = {s: {c.path for c in index.splits[s]} for s in train}
    for small, big in zip(train, train[1:]):
        extra = sets[small] - sets[big]
        if extra:
            problems.append(f"{small} has {len(extra)} files not in {big} (e.g. {sorted(extra)[0]})")
    if "test" in index.splits:
        test = {c.path for c in index.splits["test"]}
        test_rec = {_recording(p) for p in test}
        for s in train:
            both = sets[s] & test
            if both:
                problems.append(f"{s} shares {len(both)} files with test (e.g. {sorted(both)[0]})")
            shared = {_recording(p) for p in sets[s]} & test_rec
            if shared and not both:
                problems.append(f"{s} shares {len(shared)} 10 s recordings with test (e.g. {sorted(shared)[0]})")
    return problems


def _recording(path: str) -> str:
    """The 10 s recording a 1 s TAU22 segment comes from: the name without ``-<second>-<device>.wav``."""
    return posixpath.basename(path).rsplit("-", 2)[0]


_LOADERS = {"tau2020": _load_tau2020, "tau2021eval": _load_tau2021eval, "esc": _load_esc, "tau2022": _load_tau2022}


def load_index(dataset: str, root: str | os.PathLike, *, check_audio: bool = True,
               split_dir: str | os.PathLike | None = None) -> DatasetIndex:
    """Read and validate a dataset's metadata.

    Args:
        dataset: "tau2020", "tau2021eval", "esc" or "tau2022".
        root: the dataset's root folder.
        check_audio: check that every listed audio file exists (one error names
            how many are missing and the first few).
        split_dir: tau2022 only: the folder of the split files (default
            ``ROOT/split_setup``; a relative path is under ``root``).

    Returns:
        The index.

    Raises:
        Sp4scError: unknown dataset, bad metadata, or missing audio.
    """
    if dataset not in _LOADERS:
        raise Sp4scError(f"--dataset {dataset!r}: unknown; choose one of {', '.join(DATASETS)}")
    if split_dir is not None and dataset != "tau2022":
        raise Sp4scError(f"--split-dir: only the tau2022 dataset has split files, not {dataset!r}")
    index = _load_tau2022(_root(root), split_dir) if dataset == "tau2022" else _LOADERS[dataset](_root(root))
    if check_audio:
        check_files_exist(index.root, index.all_clips())
    return index


def summarize(index: DatasetIndex) -> dict:
    """Counts per split, device, scene and city (the ``sp4sc data summary --json`` schema)."""
    splits = {}
    for name, clips in index.splits.items():
        splits[name] = {
            "n": len(clips),
            "by_device": dict(sorted(Counter(c.device for c in clips if c.device is not None).items())),
            "by_scene": {k: v for k, v in ((s, sum(1 for c in clips if c.scene == s)) for s in index.classes) if v},
            "by_city": dict(sorted(Counter(c.city for c in clips if c.city is not None).items())),
        }
    out = {"dataset": index.name, "total": len(index.all_clips()), "splits": splits}
    if index.name == "tau2022":
        out["split_dir"] = str(index.split_dir)
        out["missing_splits"] = [s for s in TAU22_SPLITS if s not in index.splits]
        out["structure_problems"] = tau22_nesting(index)
    return out
